//! Workflows: a plan is a graph of tasks that the orchestrator drives to done — dispatched in
//! dependency order within concurrency limits, retried, debugged through branch tasks,
//! reviewed a bounded number of times, escalated to a person when stuck.
//!
//! Everything here is pure but the projection: [`validate`] checks a submitted plan,
//! [`PlanState::fold`] reads a plan's stream `plan/<id>`, [`reconcile`] decides what happens
//! next, [`classify`] names the cause of a failure and the [`router`] recommends agents. All
//! workflow state is events on the plan's stream; the [`WorkflowsProjection`] serves lists
//! and the deadline scan.

mod decide;
mod plan;
mod projection;
pub mod router;
mod state;

pub use decide::{Decision, ReconcileContext, classify, reconcile, serving_agent};
pub use plan::{
    Cause, Check, Concurrency, DEFAULT_DEBUGGER_ROLE, MAX_TASKS, PlanIssue, PlanSpec,
    ROUTE_ESCALATE, ROUTE_RETRY, Review, TaskSpec, find_cycle, valid_id, valid_role, validate,
};
pub use projection::WorkflowsProjection;
pub use state::{
    Feedback, PlanEvent, PlanState, PlanStatus, Run, RunKind, Stop, TaskState, TaskStatus,
};

/// The event types of workflows.
pub mod types {
    /// A plan was submitted (stream `plan/<id>`, expected: no stream).
    pub const PLAN_SUBMITTED: &str = "plan.submitted.v1";
    /// A person asked to cancel a plan.
    pub const PLAN_CANCELLED: &str = "plan.cancelled.v1";
    /// The orchestrator closed a plan: succeeded, aborted or cancelled.
    pub const PLAN_FINISHED: &str = "plan.finished.v1";
    /// The orchestrator handed a run of a task to an agent.
    pub const TASK_DISPATCHED: &str = "task.dispatched.v1";
    /// An agent started a run.
    pub const TASK_STARTED: &str = "task.started.v1";
    /// A run passed.
    pub const TASK_COMPLETED: &str = "task.completed.v1";
    /// A run failed.
    pub const TASK_FAILED: &str = "task.failed.v1";
    /// A reviewer gave a verdict.
    pub const TASK_REVIEWED: &str = "task.reviewed.v1";
    /// A run gave no result before its deadline (from the scheduler).
    pub const TASK_TIMED_OUT: &str = "task.timed_out.v1";
    /// The orchestrator opened a branch task on a failure.
    pub const TASK_BRANCHED: &str = "task.branched.v1";
    /// A task waits for a person.
    pub const TASK_ESCALATED: &str = "task.escalated.v1";
    /// A person resolved an escalation: retry, skip or abort.
    pub const TASK_RESOLVED: &str = "task.resolved.v1";
    /// Every type on a plan's stream.
    pub const PLAN_STREAM_TYPES: [&str; 12] = [
        PLAN_SUBMITTED,
        PLAN_CANCELLED,
        PLAN_FINISHED,
        TASK_DISPATCHED,
        TASK_STARTED,
        TASK_COMPLETED,
        TASK_FAILED,
        TASK_REVIEWED,
        TASK_TIMED_OUT,
        TASK_BRANCHED,
        TASK_ESCALATED,
        TASK_RESOLVED,
    ];
}

/// The stream of a plan.
pub fn stream(plan_id: &str) -> String {
    format!("plan/{plan_id}")
}

/// Reads a plan's stream on `conn` and folds it; `None` when the plan does not exist.
pub async fn load(
    conn: &mut sqlx::PgConnection,
    workspace: &str,
    plan_id: &str,
) -> Result<Option<PlanState>, sqlx::Error> {
    let rows: Vec<(
        String,
        serde_json::Value,
        chrono::DateTime<chrono::Utc>,
        i64,
        String,
    )> = sqlx::query_as(
        "SELECT type, data, time, stream_version, correlation_id FROM events
             WHERE workspace = $1 AND stream_id = $2 ORDER BY stream_version",
    )
    .bind(workspace)
    .bind(stream(plan_id))
    .fetch_all(&mut *conn)
    .await?;
    Ok(PlanState::fold(rows.iter().map(
        |(ty, data, time, version, correlation)| PlanEvent {
            ty,
            data,
            time: *time,
            version: u64::try_from(*version).unwrap_or_default(),
            correlation_id: correlation,
        },
    )))
}

/// The workspace agents register in.
const SYSTEM_WORKSPACE: &str = "system";

/// The agent registry as the router and the orchestrator see it: every agent's last
/// registration, read from the store itself (never behind, unlike a projection).
pub async fn registry(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<router::Candidate>, sqlx::Error> {
    let rows: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT DISTINCT ON (stream_id) data FROM events
         WHERE workspace = $1 AND stream_id LIKE 'agent/%' AND type = 'agent.registered.v1'
         ORDER BY stream_id, stream_version DESC",
    )
    .bind(SYSTEM_WORKSPACE)
    .fetch_all(&mut *conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|data| {
            Some(router::Candidate {
                name: data.get("name")?.as_str()?.to_owned(),
                capabilities: data
                    .get("capabilities")?
                    .as_array()?
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect(),
            })
        })
        .collect())
}

/// The roles some registered agent serves (capability `role:<name>`).
pub fn served_roles(agents: &[router::Candidate]) -> std::collections::BTreeSet<String> {
    agents
        .iter()
        .flat_map(|a| a.capabilities.iter())
        .filter_map(|c| c.strip_prefix("role:"))
        .map(str::to_owned)
        .collect()
}
