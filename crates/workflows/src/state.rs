//! A plan's state, folded from its stream `plan/<id>`. Applying holds no decisions beyond
//! bookkeeping; the orchestrator's choices are events of their own ([`crate::reconcile`]).
//!
//! An outcome (`task.started/completed/failed/reviewed/timed_out.v1`) counts only for the run
//! it names: a late report of an earlier attempt changes nothing.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    Cause, PlanSpec, TaskSpec,
    types::{
        PLAN_CANCELLED, PLAN_FINISHED, PLAN_SUBMITTED, TASK_BRANCHED, TASK_COMPLETED,
        TASK_DISPATCHED, TASK_ESCALATED, TASK_FAILED, TASK_RESOLVED, TASK_REVIEWED, TASK_STARTED,
        TASK_TIMED_OUT,
    },
};

/// Where a plan stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PlanStatus {
    /// Tasks are being driven.
    Running,
    /// Every task is done or skipped.
    Succeeded,
    /// A person aborted it (resolving an escalation with `abort`).
    Aborted,
    /// A person cancelled it.
    Cancelled,
}

impl PlanStatus {
    /// Its name in events and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Succeeded => "succeeded",
            Self::Aborted => "aborted",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where a task stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Not dispatched: its dependencies are not done, or the plan is at its concurrency limit.
    Waiting,
    /// Handed to an agent, not started yet.
    Dispatched,
    /// An agent is running it.
    Running,
    /// Its run failed; the orchestrator retries, branches or escalates.
    Failed,
    /// A branch task works on its failure.
    Blocked,
    /// Passed its acceptance; waits for its review.
    Passed,
    /// Its reviewer asked for changes.
    ChangesRequested,
    /// Done.
    Done,
    /// A person skipped it.
    Skipped,
    /// Waits for a person (`POST …/tasks/{id}/resolve`).
    Escalated,
}

impl TaskStatus {
    /// Done or skipped: dependants may run.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Done | Self::Skipped)
    }

    /// Dispatched or running: counts against the concurrency limits.
    pub fn is_active(self) -> bool {
        matches!(self, Self::Dispatched | Self::Running)
    }
}

/// What a dispatch asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunKind {
    /// The role's command, then the acceptance checks.
    Work,
    /// Only the acceptance checks (after a branch task fixed the failure).
    Verify,
    /// The reviewer role's command, which gives a verdict.
    Review,
}

impl RunKind {
    /// Its name in events.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Work => "work",
            Self::Verify => "verify",
            Self::Review => "review",
        }
    }
}

/// The run a task is on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    /// What it does.
    pub kind: RunKind,
    /// The dispatch number of the task (every kind counts).
    pub attempt: u32,
    /// The role that runs it.
    pub role: String,
    /// The agent it was dispatched to.
    pub agent: Option<String>,
    /// When it was dispatched.
    pub dispatched_at: DateTime<Utc>,
    /// Not to start before (a retry's backoff).
    pub not_before: DateTime<Utc>,
    /// When the orchestrator gives up waiting for a result.
    pub deadline: DateTime<Utc>,
    /// When the agent started it.
    pub started_at: Option<DateTime<Utc>>,
    /// For reviews: which cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review_cycle: Option<u32>,
}

/// What a reviewer asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feedback {
    /// The review cycle that asked.
    pub cycle: u32,
    /// The reviewer's message.
    pub message: String,
}

/// One task's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskState {
    /// What it is (for a branch task, made by the orchestrator).
    pub spec: TaskSpec,
    /// The task whose failure this branch task works on.
    pub parent: Option<String>,
    /// The plan task this one descends from (itself for plan tasks): its working directory.
    pub root: String,
    /// 0 for plan tasks, parent's + 1 for branches.
    pub depth: u32,
    /// Where it stands.
    pub status: TaskStatus,
    /// Dispatches so far (the number of the last).
    pub attempts: u32,
    /// Failed runs since it was last (re)started by a person.
    pub failures: u32,
    /// Reviews dispatched since it was last (re)started by a person.
    pub review_cycle: u32,
    /// The current or last run.
    pub current: Option<Run>,
    /// The last failure's report (the data of `task.failed.v1`, or a timeout).
    pub last_failure: Option<Value>,
    /// The orchestrator's classification of the last failure.
    pub cause: Option<Cause>,
    /// The reviewer's last request for changes.
    pub feedback: Option<Feedback>,
    /// Its branch tasks, oldest first.
    pub branches: Vec<String>,
    /// The commit of its last successful run.
    pub commit: Option<String>,
    /// Files its successful runs changed.
    pub changed_files: Vec<String>,
    /// Why it waits for a person.
    pub escalation: Option<String>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
}

impl TaskState {
    fn new(
        spec: TaskSpec,
        parent: Option<String>,
        root: String,
        depth: u32,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            spec,
            parent,
            root,
            depth,
            status: TaskStatus::Waiting,
            attempts: 0,
            failures: 0,
            review_cycle: 0,
            current: None,
            last_failure: None,
            cause: None,
            feedback: None,
            branches: Vec::new(),
            commit: None,
            changed_files: Vec::new(),
            escalation: None,
            updated_at: at,
        }
    }

    /// Its id.
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    /// "review cycle 1 of 2", when it has a review.
    pub fn review_label(&self) -> Option<String> {
        self.spec
            .review
            .as_ref()
            .map(|r| format!("review cycle {} of {}", self.review_cycle, r.max_cycles))
    }

    /// Whether an outcome names this task's current run.
    fn is_current(&self, attempt: Option<u64>) -> bool {
        match (&self.current, attempt) {
            (Some(run), Some(a)) => u64::from(run.attempt) == a,
            _ => false,
        }
    }
}

/// Who stopped a plan, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stop {
    /// A person.
    pub by: String,
    /// Why.
    pub reason: Option<String>,
}

/// A plan as its stream tells it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanState {
    /// Its id.
    pub plan_id: String,
    /// Where it stands.
    pub status: PlanStatus,
    /// Who submitted it.
    pub submitted_by: String,
    /// When.
    pub submitted_at: DateTime<Utc>,
    /// When it last changed.
    pub updated_at: DateTime<Utc>,
    /// When it finished.
    pub finished_at: Option<DateTime<Utc>>,
    /// A cancellation, once asked for.
    pub cancel: Option<Stop>,
    /// An abort, once asked for.
    pub abort: Option<Stop>,
    /// The plan as submitted.
    pub spec: PlanSpec,
    /// Its tasks: the plan's, in its order, then branch tasks as they were made.
    pub tasks: Vec<TaskState>,
    /// The stream's last version (what the orchestrator's next decision expects).
    pub version: u64,
    /// The correlation its events share (the submission's).
    pub correlation_id: String,
}

/// One event of a plan's stream, as folding needs it.
#[derive(Debug, Clone, Copy)]
pub struct PlanEvent<'a> {
    /// Its type.
    pub ty: &'a str,
    /// Its data.
    pub data: &'a Value,
    /// Its time.
    pub time: DateTime<Utc>,
    /// Its version in the stream.
    pub version: u64,
    /// Its correlation id.
    pub correlation_id: &'a str,
}

fn text(data: &Value, key: &str) -> Option<String> {
    data.get(key).and_then(Value::as_str).map(str::to_owned)
}

impl PlanState {
    /// Folds a plan's stream, oldest first. `None` when it holds no `plan.submitted.v1`.
    pub fn fold<'a>(events: impl IntoIterator<Item = PlanEvent<'a>>) -> Option<Self> {
        let mut state: Option<Self> = None;
        for event in events {
            match &mut state {
                None if event.ty == PLAN_SUBMITTED => state = Self::submitted(event),
                None => {}
                Some(s) => s.apply(event),
            }
        }
        state
    }

    fn submitted(event: PlanEvent<'_>) -> Option<Self> {
        let spec: PlanSpec = serde_json::from_value(event.data.get("plan")?.clone()).ok()?;
        let plan_id = text(event.data, "plan_id")?;
        let tasks = spec
            .tasks
            .iter()
            .map(|t| TaskState::new(t.clone(), None, t.id.clone(), 0, event.time))
            .collect();
        Some(Self {
            plan_id,
            status: PlanStatus::Running,
            submitted_by: text(event.data, "submitted_by").unwrap_or_default(),
            submitted_at: event.time,
            updated_at: event.time,
            finished_at: None,
            cancel: None,
            abort: None,
            spec,
            tasks,
            version: event.version,
            correlation_id: event.correlation_id.to_owned(),
        })
    }

    /// The task named `id`.
    pub fn task(&self, id: &str) -> Option<&TaskState> {
        self.tasks.iter().find(|t| t.spec.id == id)
    }

    fn task_mut(&mut self, id: &str) -> Option<&mut TaskState> {
        self.tasks.iter_mut().find(|t| t.spec.id == id)
    }

    /// Applies one event of the stream (a `plan.submitted.v1` again is ignored).
    pub fn apply(&mut self, event: PlanEvent<'_>) {
        self.version = self.version.max(event.version);
        self.updated_at = event.time;
        let data = event.data;
        let at = event.time;
        if self.status != PlanStatus::Running {
            return; // a finished plan changes no more
        }
        match event.ty {
            PLAN_CANCELLED => {
                self.cancel.get_or_insert(Stop {
                    by: text(data, "cancelled_by").unwrap_or_default(),
                    reason: text(data, "reason"),
                });
            }
            PLAN_FINISHED => {
                self.status = match data.get("outcome").and_then(Value::as_str) {
                    Some("aborted") => PlanStatus::Aborted,
                    Some("cancelled") => PlanStatus::Cancelled,
                    _ => PlanStatus::Succeeded,
                };
                self.finished_at = Some(at);
            }
            TASK_BRANCHED => self.branched(data, at),
            _ => {
                let Some(id) = text(data, "task_id") else {
                    return;
                };
                if event.ty == TASK_RESOLVED
                    && data.get("action").and_then(Value::as_str) == Some("abort")
                {
                    self.abort.get_or_insert(Stop {
                        by: text(data, "resolved_by").unwrap_or_default(),
                        reason: text(data, "comment"),
                    });
                }
                if let Some(task) = self.task_mut(&id) {
                    apply_task(task, event.ty, data, at);
                }
            }
        }
    }

    fn branched(&mut self, data: &Value, at: DateTime<Utc>) {
        let (Some(parent_id), Some(id), Some(role)) = (
            text(data, "parent_id"),
            text(data, "task_id"),
            text(data, "role"),
        ) else {
            return;
        };
        if self.task(&id).is_some() {
            return;
        }
        let Some(parent) = self.task_mut(&parent_id) else {
            return;
        };
        parent.status = TaskStatus::Blocked;
        parent.branches.push(id.clone());
        parent.updated_at = at;
        let root = parent.root.clone();
        let depth = parent.depth + 1;
        let max_attempts = parent.spec.max_attempts;
        let timeout_secs = parent.spec.timeout_secs;
        let mut inputs = serde_json::Map::new();
        inputs.insert("parent_task".into(), json!(parent_id));
        if let Some(failure) = &parent.last_failure {
            inputs.insert("failure".into(), failure.clone());
        }
        let spec = TaskSpec {
            id,
            title: text(data, "title").unwrap_or_else(|| format!("Fix the failure of {parent_id}")),
            description: text(data, "reason"),
            role,
            depends_on: Vec::new(),
            inputs,
            acceptance: Vec::new(),
            max_attempts,
            timeout_secs,
            review: None,
        };
        self.tasks
            .push(TaskState::new(spec, Some(parent_id), root, depth, at));
    }
}

fn apply_task(task: &mut TaskState, ty: &str, data: &Value, at: DateTime<Utc>) {
    let attempt = data.get("attempt").and_then(Value::as_u64);
    let time = |key: &str| {
        data.get(key)
            .and_then(Value::as_str)
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.with_timezone(&Utc))
    };
    match ty {
        TASK_DISPATCHED => {
            let kind: RunKind = data
                .get("kind")
                .cloned()
                .and_then(|k| serde_json::from_value(k).ok())
                .unwrap_or(RunKind::Work);
            let attempt = attempt
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(task.attempts + 1);
            task.attempts = task.attempts.max(attempt);
            let review_cycle = data
                .get("review_cycle")
                .and_then(Value::as_u64)
                .and_then(|c| u32::try_from(c).ok());
            if let Some(cycle) = review_cycle {
                task.review_cycle = task.review_cycle.max(cycle);
            }
            task.current = Some(Run {
                kind,
                attempt,
                role: text(data, "role").unwrap_or_else(|| task.spec.role.clone()),
                agent: text(data, "agent"),
                dispatched_at: at,
                not_before: time("not_before").unwrap_or(at),
                deadline: time("deadline").unwrap_or(at),
                started_at: None,
                review_cycle,
            });
            task.status = TaskStatus::Dispatched;
            task.escalation = None;
        }
        TASK_STARTED if task.is_current(attempt) && task.status.is_active() => {
            task.status = TaskStatus::Running;
            if let Some(run) = &mut task.current {
                run.started_at = Some(time("started_at").unwrap_or(at));
            }
        }
        TASK_COMPLETED if task.is_current(attempt) && task.status.is_active() => {
            if let Some(commit) = text(data, "commit") {
                task.commit = Some(commit);
            }
            if let Some(files) = data.get("changed_files").and_then(Value::as_array) {
                for file in files.iter().filter_map(Value::as_str) {
                    if !task.changed_files.iter().any(|f| f == file) {
                        task.changed_files.push(file.to_owned());
                    }
                }
            }
            task.status = if task.spec.review.is_some() {
                TaskStatus::Passed
            } else {
                TaskStatus::Done
            };
        }
        TASK_FAILED if task.is_current(attempt) && task.status.is_active() => {
            task.status = TaskStatus::Failed;
            task.failures += 1;
            task.last_failure = Some(data.clone());
            task.cause = Some(crate::classify(data));
        }
        TASK_TIMED_OUT if task.is_current(attempt) && task.status.is_active() => {
            task.status = TaskStatus::Failed;
            task.failures += 1;
            let mut report = data.clone();
            report["timed_out"] = json!(true);
            report["reason"] = json!("no result before the deadline: the agent went silent");
            task.cause = Some(crate::classify(&report));
            task.last_failure = Some(report);
        }
        TASK_REVIEWED if task.is_current(attempt) && task.status.is_active() => {
            if data.get("verdict").and_then(Value::as_str) == Some("approved") {
                task.status = TaskStatus::Done;
            } else {
                task.status = TaskStatus::ChangesRequested;
                task.feedback = Some(Feedback {
                    cycle: task.review_cycle,
                    message: text(data, "message").unwrap_or_default(),
                });
            }
        }
        TASK_ESCALATED => {
            task.status = TaskStatus::Escalated;
            task.escalation = text(data, "reason");
        }
        TASK_RESOLVED if task.status == TaskStatus::Escalated => {
            match data.get("action").and_then(Value::as_str) {
                Some("retry") => {
                    task.status = TaskStatus::Waiting;
                    task.failures = 0;
                    task.review_cycle = 0;
                    task.escalation = None;
                    // A blocked parent whose branch was escalated waits for that branch.
                }
                Some("skip") => {
                    task.status = TaskStatus::Skipped;
                    task.escalation = None;
                }
                _ => {}
            }
        }
        _ => return,
    }
    task.updated_at = at;
}

impl PlanState {
    /// The plan as the API shows it: every task's state, attempts, branch tasks and review
    /// cycle ("review cycle 1 of 2").
    pub fn view(&self) -> Value {
        let tasks: Vec<Value> = self
            .tasks
            .iter()
            .map(|t| {
                let mut task = json!({
                    "id": t.spec.id,
                    "title": t.spec.title,
                    "role": t.spec.role,
                    "status": t.status,
                    "depends_on": t.spec.depends_on,
                    "parent_id": t.parent,
                    "depth": t.depth,
                    "attempts": t.attempts,
                    "failures": t.failures,
                    "max_attempts": t.spec.max_attempts,
                    "branches": t.branches,
                    "current_run": t.current,
                    "cause": t.cause,
                    "last_failure": t.last_failure.as_ref().map(|f| json!({
                        "reason": f.get("reason"),
                        "phase": f.get("phase"),
                        "exit_code": f.get("exit_code"),
                        "output_tail": f.get("output_tail"),
                    })),
                    "escalation": t.escalation,
                    "commit": t.commit,
                    "changed_files": t.changed_files,
                    "updated_at": t.updated_at,
                });
                if let Some(review) = &t.spec.review {
                    task["review"] = json!({
                        "reviewer_role": review.reviewer_role,
                        "cycle": t.review_cycle,
                        "max_cycles": review.max_cycles,
                        "label": t.review_label(),
                        "last_feedback": t.feedback,
                    });
                }
                task
            })
            .collect();
        json!({
            "id": self.plan_id,
            "title": self.spec.title,
            "description": self.spec.description,
            "status": self.status,
            "submitted_by": self.submitted_by,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "finished_at": self.finished_at,
            "cancel": self.cancel,
            "concurrency": self.spec.concurrency,
            "max_branch_depth": self.spec.max_branch_depth,
            "version": self.version,
            "correlation_id": self.correlation_id,
            "tasks": tasks,
        })
    }
}
