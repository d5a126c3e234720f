//! The retrospective agent: answers `retrospective.trigger.v1` with
//! `retrospective.completed.v1` — per-agent metrics over the requested window of the
//! workspace's events, insights backed by the events that support them, and action items.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_agent_runtime::{Agent, Context, HandlerError, Manifest};
use switchyard_events::{EventType, RecordedEvent};

/// The agent.
#[derive(Debug)]
pub struct Retrospective {
    manifest: Manifest,
}

impl Retrospective {
    /// With its manifest.
    pub fn new() -> Self {
        let ty = |t: &str| EventType::parse(t).map_err(|e| e.to_string());
        let (Ok(trigger), Ok(completed)) = (
            ty("retrospective.trigger.v1"),
            ty("retrospective.completed.v1"),
        ) else {
            unreachable!("the types are valid literals")
        };
        Self {
            manifest: Manifest {
produces: Vec::new(),
consumes: Vec::new(),
                name: "retrospective".into(),
                version: "0.1.0".into(),
                capabilities: vec!["retrospective".into(), "metrics".into()],
                subscribes: vec![trigger],
                emits: vec![completed],
            },
        }
    }
}

impl Default for Retrospective {
    fn default() -> Self {
        Self::new()
    }
}

/// Most events a retrospective reads; a longer window is cut to its newest events.
const MAX_EVENTS: i64 = 100_000;

impl Agent for Retrospective {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = event.data["retrospective_id"]
                .as_str()
                .ok_or_else(|| HandlerError::new("the trigger has no retrospective_id"))?
                .to_owned();
            let window = |k: &str| {
                event.data["window"][k]
                    .as_str()
                    .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
                    .map(|t| t.to_utc())
            };
            let from: Option<DateTime<Utc>> = window("from");
            let to = window("to").unwrap_or(event.time);

            // Events of the workspace in the window, up to the trigger itself.
            let rows: Vec<(String, String, String, Value)> = sqlx::query_as(
                "SELECT id, type, source, data FROM events
                 WHERE workspace = $1 AND ($2::timestamptz IS NULL OR time >= $2)
                   AND time <= $3 AND position < $4
                 ORDER BY position DESC LIMIT $5",
            )
            .bind(event.workspace.as_str())
            .bind(from)
            .bind(to)
            .bind(event.position)
            .bind(MAX_EVENTS)
            .fetch_all(ctx.connection())
            .await?;

            let mut metrics: BTreeMap<String, BTreeMap<&str, u64>> = BTreeMap::new();
            let mut failures: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (event_id, ty, source, data) in &rows {
                if let Some(agent) = source.strip_prefix("/agents/") {
                    *metrics
                        .entry(agent.to_owned())
                        .or_default()
                        .entry("emitted")
                        .or_default() += 1;
                }
                if ty == "agent.failed.v1"
                    && let Some(agent) = data["agent"].as_str()
                {
                    *metrics
                        .entry(agent.to_owned())
                        .or_default()
                        .entry("failures")
                        .or_default() += 1;
                    failures
                        .entry(agent.to_owned())
                        .or_default()
                        .push(event_id.clone());
                }
            }
            let insights: Vec<Value> = failures
                .iter()
                .map(|(agent, ids)| {
                    json!({
                        "text": format!("{agent} gave up on {} event(s) in this window", ids.len()),
                        "evidence": ids.iter().take(100).collect::<Vec<_>>(),
                    })
                })
                .collect();
            let action_items: Vec<Value> = failures
                .iter()
                .map(|(agent, ids)| {
                    json!({
                        "id": format!("dead-letters-{agent}"),
                        "agent": agent,
                        "text": format!("Look into the {} dead letter(s) of {agent} (GET /v1/ops/dead-letters) and retry them once fixed", ids.len()),
                        "status": "open",
                    })
                })
                .collect();
            ctx.emit(
                "retrospective.completed.v1",
                &format!("retrospective/{id}"),
                json!({
                    "retrospective_id": id,
                    "metrics": metrics,
                    "insights": insights,
                    "action_items": action_items,
                }),
            )
        })
    }
}
