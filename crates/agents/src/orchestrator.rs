//! The orchestrator: drives plans. Whatever happens on a plan's stream (a submission, a run's
//! outcome, a timeout, a person's resolution, a cancellation) wakes it; it folds the stream,
//! asks [`switchyard_workflows::reconcile`] what is due, and appends those decisions expecting
//! the stream's exact version — so two instances, or a redelivery, never decide twice: the
//! loser of the race decides again on what the winner wrote, and finds nothing left to do.
//!
//! The deadline watcher ([`watch_deadlines`]) is its clock: a run that gives no result by its
//! deadline gets `task.timed_out.v1` from `/scheduler` (one per run, whatever the number of
//! instances, through a deterministic event id), which the orchestrator treats as a failure.

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_events::{
    EventId, EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace,
};
use switchyard_store::EventStore;
use switchyard_workflows::{
    PlanSpec, ReconcileContext, load, reconcile, registry,
    router::{Candidate, Router},
    stream, types,
};
use tokio_util::sync::CancellationToken;

/// The orchestrator's timing.
#[derive(Debug, Clone)]
pub struct OrchestratorConfig {
    /// The first retry of a failed task waits this long, doubling per failure.
    pub retry_backoff: Duration,
    /// Added to a run's own time limits before it counts as silent.
    pub silence_grace: Duration,
}

impl Default for OrchestratorConfig {
    fn default() -> Self {
        Self {
            retry_backoff: Duration::from_secs(2),
            silence_grace: Duration::from_secs(30),
        }
    }
}

/// The agent.
#[derive(Debug)]
pub struct Orchestrator {
    manifest: Manifest,
    config: OrchestratorConfig,
    /// The router over the registry it was built from: building one costs more than a
    /// recommendation (about 0.6 ms against 15 µs), and the registry rarely changes.
    router: std::sync::Mutex<Option<(Vec<Candidate>, Arc<Router>)>>,
}

fn types_of(names: &[&str]) -> Vec<EventType> {
    names
        .iter()
        .filter_map(|t| EventType::parse(t).ok())
        .collect()
}

impl Orchestrator {
    /// With its manifest.
    pub fn new(config: OrchestratorConfig) -> Self {
        Self {
            manifest: Manifest {
                produces: Vec::new(),
                consumes: Vec::new(),
                name: "orchestrator".into(),
                version: "0.1.0".into(),
                capabilities: vec![
                    "orchestrate".into(),
                    "plan".into(),
                    "dispatch".into(),
                    "workflow".into(),
                ],
                subscribes: types_of(&[
                    types::PLAN_SUBMITTED,
                    types::PLAN_CANCELLED,
                    types::TASK_COMPLETED,
                    types::TASK_FAILED,
                    types::TASK_REVIEWED,
                    types::TASK_TIMED_OUT,
                    types::TASK_RESOLVED,
                    "task.requested.v1",
                ]),
                emits: types_of(&[
                    types::TASK_DISPATCHED,
                    types::TASK_BRANCHED,
                    types::TASK_ESCALATED,
                    types::PLAN_FINISHED,
                    types::PLAN_SUBMITTED,
                ]),
            },
            config,
            router: std::sync::Mutex::new(None),
        }
    }

    fn router(&self, agents: &[Candidate]) -> Arc<Router> {
        let Ok(mut cached) = self.router.lock() else {
            return Arc::new(Router::new(agents));
        };
        match &*cached {
            Some((built_from, router)) if built_from == agents => Arc::clone(router),
            _ => {
                let router = Arc::new(Router::new(agents));
                *cached = Some((agents.to_vec(), Arc::clone(&router)));
                router
            }
        }
    }
}

impl Orchestrator {
    /// A task requested by an agent (e.g. a CI failure) becomes a plan of one task.
    fn plan_for_request(
        &self,
        ctx: &mut Context<'_>,
        event: &RecordedEvent,
    ) -> Result<(), HandlerError> {
        let data = &event.data;
        let task_id = data["task_id"].as_str().unwrap_or("task");
        let plan_id: String = format!("req-{task_id}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                    c
                } else {
                    '-'
                }
            })
            .take(64)
            .collect();
        let spec: PlanSpec = serde_json::from_value(json!({
            "id": plan_id,
            "title": data["title"],
            "description": data.get("description"),
            "tasks": [{
                "id": "task",
                "title": data["title"],
                "description": data.get("description"),
                "role": data["role"],
                "inputs": data["inputs"],
            }],
        }))
        .map_err(|e| HandlerError::new(format!("the requested task makes no plan: {e}")))?;
        let mut plan = NewEvent::new(
            event.workspace.clone(),
            Source::parse("/agents/orchestrator").map_err(|e| HandlerError::new(e.to_string()))?,
            EventType::parse(types::PLAN_SUBMITTED)
                .map_err(|e| HandlerError::new(e.to_string()))?,
            StreamId::parse(&stream(&plan_id)).map_err(|e| HandlerError::new(e.to_string()))?,
            json!({
                "plan_id": plan_id,
                "submitted_by": data["requested_by"],
                "plan": spec,
            }),
        )
        .expecting(ExpectedVersion::NoStream);
        plan.id = EventId::parse(&format!("plan-for-{}", event.id))
            .map_err(|e| HandlerError::new(e.to_string()))?;
        ctx.emit_event(plan)
    }
}

impl Agent for Orchestrator {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            if event.ty.as_str() == "task.requested.v1" {
                let exists: bool = sqlx::query_scalar(
                    "SELECT EXISTS (SELECT 1 FROM events WHERE workspace = $1 AND stream_id = $2)",
                )
                .bind(event.workspace.as_str())
                .bind(stream(&format!(
                    "req-{}",
                    event.data["task_id"].as_str().unwrap_or_default()
                )))
                .fetch_one(ctx.connection())
                .await?;
                if exists {
                    return Ok(());
                }
                return self.plan_for_request(ctx, event);
            }
            let Some(plan_id) = event.data.get("plan_id").and_then(Value::as_str) else {
                return Ok(());
            };
            let Some(state) = load(ctx.connection(), event.workspace.as_str(), plan_id).await?
            else {
                return Ok(());
            };
            let agents = registry(ctx.connection()).await?;
            let router = self.router(&agents);
            let decisions = reconcile(
                &state,
                &ReconcileContext {
                    now: chrono::Utc::now(),
                    agents: &agents,
                    router: &router,
                    retry_backoff: self.config.retry_backoff,
                    silence_grace: self.config.silence_grace,
                },
            );
            if !decisions.is_empty() {
                let kinds: Vec<&str> = decisions.iter().map(|d| d.ty).collect();
                tracing::info!(plan = plan_id, version = state.version, decisions = ?kinds, "plan reconciled");
            }
            let plan_stream =
                StreamId::parse(&stream(plan_id)).map_err(|e| HandlerError::new(e.to_string()))?;
            let source = Source::parse("/agents/orchestrator")
                .map_err(|e| HandlerError::new(e.to_string()))?;
            for (i, decision) in decisions.into_iter().enumerate() {
                let ty =
                    EventType::parse(decision.ty).map_err(|e| HandlerError::new(e.to_string()))?;
                let mut next = NewEvent::new(
                    event.workspace.clone(),
                    source.clone(),
                    ty,
                    plan_stream.clone(),
                    decision.data,
                );
                // Every decision belongs to the plan's correlation.
                next.correlation_id = Some(state.correlation_id.clone());
                if i == 0 {
                    next = next.expecting(ExpectedVersion::Exactly(state.version));
                }
                ctx.emit_event(next)?;
            }
            Ok(())
        })
    }
}

/// Appends `task.timed_out.v1` for every run past its deadline, every `every`, until
/// `shutdown`. Reads the `workflows` projection; its lag only delays a timeout.
pub async fn watch_deadlines(store: EventStore, every: Duration, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        if let Err(e) = time_out_silent_runs(&store).await {
            tracing::warn!(error = %e, "deadline scan failed; trying again");
        }
    }
}

/// One deadline scan; returns how many runs it timed out.
pub async fn time_out_silent_runs(store: &EventStore) -> Result<usize, HandlerError> {
    /// workspace, plan, task, attempt, deadline, the plan's correlation
    type Overdue = (
        String,
        String,
        String,
        i32,
        chrono::DateTime<chrono::Utc>,
        Option<String>,
    );
    let rows: Vec<Overdue> =
        sqlx::query_as(
            "SELECT r.workspace, r.plan_id, r.task_id, r.attempt, r.deadline, p.state->>'correlation_id'
             FROM proj_workflows.runs r
             JOIN proj_workflows.plans p ON p.workspace = r.workspace AND p.id = r.plan_id
             WHERE r.status IN ('dispatched', 'running') AND r.deadline < now()
             ORDER BY r.deadline LIMIT 200",
        )
        .fetch_all(store.pool())
        .await?;
    let invalid = |e: switchyard_events::InvalidId| HandlerError::new(e.to_string());
    let mut events = Vec::with_capacity(rows.len());
    for (workspace, plan_id, task_id, attempt, deadline, correlation) in rows {
        let mut event = NewEvent::new(
            Workspace::parse(&workspace).map_err(invalid)?,
            Source::parse("/scheduler").map_err(invalid)?,
            EventType::parse(types::TASK_TIMED_OUT).map_err(invalid)?,
            StreamId::parse(&stream(&plan_id)).map_err(invalid)?,
            json!({
                "plan_id": plan_id, "task_id": task_id, "attempt": attempt,
                "deadline": deadline.to_rfc3339(),
            }),
        );
        // One per run, however many instances scan.
        event.id =
            EventId::parse(&format!("timeout:{plan_id}:{task_id}:{attempt}")).map_err(invalid)?;
        event.correlation_id = correlation;
        events.push(event);
    }
    let count = events.len();
    for event in events {
        // One at a time: a plan removed meanwhile must not hold the others back.
        if let Err(e) = store.append(vec![event]).await {
            tracing::warn!(error = %e, "cannot record a timeout");
        }
    }
    Ok(count)
}
