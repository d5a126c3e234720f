//! The `workflows` projection (schema `proj_workflows`): each plan's folded state, for lists,
//! and each task's current run with its deadline, for the scan that times out silent runs.

use futures::future::BoxFuture;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::RecordedEvent;
use switchyard_projections::Projection;

use crate::{PlanEvent, PlanState, TaskState, stream, types};

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkflowsProjection;

const SCHEMA: &str = "
CREATE TABLE plans (
    workspace     text NOT NULL,
    id            text NOT NULL,
    title         text NOT NULL,
    status        text NOT NULL,
    submitted_by  text NOT NULL,
    submitted_at  timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    tasks         integer NOT NULL,
    done          integer NOT NULL,
    escalated     integer NOT NULL,
    state         jsonb NOT NULL,
    PRIMARY KEY (workspace, id)
);
CREATE INDEX plans_recent ON plans (workspace, submitted_at DESC);
CREATE TABLE runs (
    workspace     text NOT NULL,
    plan_id       text NOT NULL,
    task_id       text NOT NULL,
    status        text NOT NULL,
    kind          text,
    attempt       integer NOT NULL,
    role          text NOT NULL,
    agent         text,
    deadline      timestamptz,
    PRIMARY KEY (workspace, plan_id, task_id)
);
CREATE INDEX runs_by_deadline ON runs (deadline) WHERE status IN ('dispatched', 'running');
";

fn status_name(value: impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(s)) => s,
        _ => String::new(),
    }
}

async fn save_run(
    tx: &mut PgConnection,
    workspace: &str,
    plan: &PlanState,
    task: &TaskState,
) -> Result<(), sqlx::Error> {
    let run = task.current.as_ref();
    // A plan that finished times nothing out.
    let deadline = run
        .map(|r| r.deadline)
        .filter(|_| plan.status == crate::PlanStatus::Running);
    sqlx::query(
        "INSERT INTO runs (workspace, plan_id, task_id, status, kind, attempt, role, agent, deadline)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (workspace, plan_id, task_id) DO UPDATE SET
             status = $4, kind = $5, attempt = $6, role = $7, agent = $8, deadline = $9",
    )
    .bind(workspace)
    .bind(&plan.plan_id)
    .bind(task.id())
    .bind(status_name(task.status))
    .bind(run.map(|r| r.kind.as_str()))
    .bind(i32::try_from(task.attempts).unwrap_or(i32::MAX))
    .bind(run.map_or(task.spec.role.as_str(), |r| r.role.as_str()))
    .bind(run.and_then(|r| r.agent.as_deref()))
    .bind(deadline)
    .execute(&mut *tx)
    .await?;
    Ok(())
}

impl Projection for WorkflowsProjection {
    fn name(&self) -> &'static str {
        "workflows"
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn types(&self) -> Option<&'static [&'static str]> {
        Some(&types::PLAN_STREAM_TYPES)
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            if !types::PLAN_STREAM_TYPES.contains(&event.ty.as_str()) {
                return Ok(());
            }
            let Some(plan_id) = event.stream.as_str().strip_prefix("plan/") else {
                return Ok(());
            };
            if stream(plan_id) != event.stream.as_str() {
                return Ok(());
            }
            let ws = event.workspace.as_str();
            let folded = PlanEvent {
                ty: event.ty.as_str(),
                data: &event.data,
                time: event.time,
                version: event.stream_version,
                correlation_id: &event.correlation_id,
            };
            let stored: Option<Value> =
                sqlx::query_scalar("SELECT state FROM plans WHERE workspace = $1 AND id = $2")
                    .bind(ws)
                    .bind(plan_id)
                    .fetch_optional(&mut *tx)
                    .await?;
            let state = match stored.and_then(|s| serde_json::from_value::<PlanState>(s).ok()) {
                Some(mut state) => {
                    state.apply(folded);
                    state
                }
                None => match PlanState::fold([folded]) {
                    Some(state) => state,
                    None => return Ok(()),
                },
            };
            let count = |f: fn(&TaskState) -> bool| {
                i32::try_from(state.tasks.iter().filter(|t| f(t)).count()).unwrap_or(i32::MAX)
            };
            sqlx::query(
                "INSERT INTO plans (workspace, id, title, status, submitted_by, submitted_at,
                                    updated_at, finished_at, tasks, done, escalated, state)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
                 ON CONFLICT (workspace, id) DO UPDATE SET
                     status = $4, updated_at = $7, finished_at = $8, tasks = $9, done = $10,
                     escalated = $11, state = $12",
            )
            .bind(ws)
            .bind(plan_id)
            .bind(&state.spec.title)
            .bind(state.status.as_str())
            .bind(&state.submitted_by)
            .bind(state.submitted_at)
            .bind(state.updated_at)
            .bind(state.finished_at)
            .bind(count(|_| true))
            .bind(count(|t| t.status.is_settled()))
            .bind(count(|t| t.status == crate::TaskStatus::Escalated))
            .bind(serde_json::to_value(&state).unwrap_or(Value::Null))
            .execute(&mut *tx)
            .await?;
            // The runs this event touched: its task (and a branch's parent), or all of them
            // when the plan was submitted or finished.
            let touched: Vec<&TaskState> = match event.ty.as_str() {
                types::PLAN_SUBMITTED | types::PLAN_FINISHED => state.tasks.iter().collect(),
                _ => {
                    let names: Vec<&str> = ["task_id", "parent_id"]
                        .iter()
                        .filter_map(|k| event.data.get(*k).and_then(Value::as_str))
                        .collect();
                    state
                        .tasks
                        .iter()
                        .filter(|t| names.contains(&t.id()))
                        .collect()
                }
            };
            for task in touched {
                save_run(tx, ws, &state, task).await?;
            }
            Ok(())
        })
    }
}
