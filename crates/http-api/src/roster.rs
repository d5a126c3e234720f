//! A workspace's agents as its operators see them: each registered agent's manifest with what
//! it did in this workspace (events emitted, failures, proposals and their approval rate,
//! memory, open action items, unresolved dead letters), from the `agent_state` and
//! `retrospectives` projections and the runtime's tables.

use axum::{
    Extension, Json,
    extract::{Path, State},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::FromRow;

use crate::{ApiError, AppState, Principal, Scope};

/// Most memory entries returned with one agent, newest first.
const MEMORY_LIMIT: i64 = 200;
/// Most dead letters returned with one agent, newest first.
const DEAD_LETTER_LIMIT: i64 = 50;

/// One agent in one workspace.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub(crate) struct AgentSummary {
    /// The agent's name (its source is `/agents/<name>`).
    name: String,
    /// Its manifest's version.
    version: String,
    /// What it can do.
    #[schema(value_type = Vec<String>)]
    capabilities: Value,
    /// The event types it handles.
    #[schema(value_type = Vec<String>)]
    subscribes: Value,
    /// The event types it emits.
    #[schema(value_type = Vec<String>)]
    emits: Value,
    /// When it last registered.
    registered_at: DateTime<Utc>,
    /// Events it emitted in this workspace.
    emitted: i64,
    /// Events it gave up on in this workspace (`agent.failed.v1`).
    failed: i64,
    /// When it last emitted or failed here.
    last_active: Option<DateTime<Utc>>,
    /// When it last handled an event (any workspace): a stalled agent shows here first.
    last_handled: Option<DateTime<Utc>>,
    /// Proposals it made here.
    proposals_made: i64,
    /// Of which approved.
    proposals_approved: i64,
    /// Of which rejected.
    proposals_rejected: i64,
    /// approved / (approved + rejected); `null` before the first decision.
    approval_rate: Option<f64>,
    /// Why its last rejected proposal was rejected.
    last_rejection_reason: Option<String>,
    /// Keys in its memory here.
    memory_keys: i64,
    /// Its action items here that are open or assigned.
    open_action_items: i64,
    /// Its unresolved dead letters here.
    dead_letters: i64,
}

const SUMMARY: &str = "
SELECT a.name, a.version, a.capabilities, a.subscribes, a.emits, a.registered_at,
       coalesce(act.emitted, 0) AS emitted, coalesce(act.failed, 0) AS failed,
       act.last_active,
       (SELECT h.handled_at FROM agent_handled h WHERE h.agent = a.name
        ORDER BY h.event_position DESC LIMIT 1) AS last_handled,
       coalesce(p.made, 0) AS proposals_made, coalesce(p.approved, 0) AS proposals_approved,
       coalesce(p.rejected, 0) AS proposals_rejected,
       CASE WHEN coalesce(p.approved, 0) + coalesce(p.rejected, 0) > 0
            THEN p.approved::float8 / (p.approved + p.rejected) END AS approval_rate,
       p.last_rejection_reason,
       (SELECT count(*) FROM proj_agent_state.memory m
        WHERE m.workspace = $1 AND m.agent = a.name) AS memory_keys,
       (SELECT count(*) FROM proj_retrospectives.action_items i
        WHERE i.workspace = $1 AND i.agent = a.name AND i.status IN ('open', 'assigned'))
           AS open_action_items,
       (SELECT count(*) FROM dead_letters d
        WHERE d.workspace = $1 AND d.agent = a.name AND d.resolved_at IS NULL) AS dead_letters
FROM proj_agent_state.agents a
LEFT JOIN proj_agent_state.activity act ON act.workspace = $1 AND act.agent = a.name
LEFT JOIN proj_agent_state.proposals p ON p.workspace = $1 AND p.agent = a.name";

/// A workspace's agents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct Roster {
    /// By name.
    agents: Vec<AgentSummary>,
}

/// One memory entry.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub(crate) struct MemoryEntry {
    /// The key.
    key: String,
    /// The value, as the agent recorded it.
    #[schema(value_type = Object)]
    value: Value,
    /// When.
    recorded_at: DateTime<Utc>,
    /// The global sequence of its `agent.memory.recorded.v1`.
    sequence: i64,
}

/// An action item of a retrospective.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub(crate) struct ActionItemView {
    /// Its id.
    id: String,
    /// The retrospective that made it.
    retrospective_id: String,
    /// What to do.
    text: String,
    /// `open`, `assigned`, `done` (or what the completion said).
    status: String,
    /// When it was made or assigned.
    assigned_at: DateTime<Utc>,
    /// When it was completed.
    completed_at: Option<DateTime<Utc>>,
    /// How it went.
    outcome: Option<String>,
}

/// An unresolved dead letter.
#[derive(Debug, Serialize, FromRow, utoipa::ToSchema)]
pub(crate) struct DeadLetterView {
    /// Its id (for `POST /v1/ops/dead-letters/{id}/retry`).
    id: uuid::Uuid,
    /// The event's global sequence.
    sequence: i64,
    /// The event's type.
    event_type: String,
    /// Deliveries tried.
    deliveries: i32,
    /// The last error.
    error: String,
    /// When the agent gave up.
    failed_at: DateTime<Utc>,
}

/// One agent in one workspace, in full.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AgentDetail {
    #[serde(flatten)]
    summary: AgentSummary,
    /// Its memory here, newest first (at most 200 entries).
    memory: Vec<MemoryEntry>,
    /// Its action items here, newest first.
    action_items: Vec<ActionItemView>,
    /// Its unresolved dead letters here, newest first (at most 50).
    dead_letter_list: Vec<DeadLetterView>,
}

/// A workspace's agents
///
/// Every registered agent, with what it did in this workspace: events emitted and failed,
/// last activity, proposals and approval rate, memory size, open action items, unresolved
/// dead letters. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/agents",
    tag = "agents",
    operation_id = "workspace_agents",
    params(("ws" = String, Path, description = "The workspace")),
    responses(
        (status = 200, description = "The agents, by name", body = Roster),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let agents: Vec<AgentSummary> = sqlx::query_as(&format!("{SUMMARY} ORDER BY a.name"))
        .bind(workspace.as_str())
        .fetch_all(state.store.pool())
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(Roster { agents }).into_response())
}

/// One agent of a workspace
///
/// Its summary as in the list, its memory (newest first), its action items, and its
/// unresolved dead letters. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/agents/{name}",
    tag = "agents",
    operation_id = "workspace_agent",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("name" = String, Path, description = "The agent"),
    ),
    responses(
        (status = 200, description = "The agent", body = AgentDetail),
        (status = 404, description = "No such workspace, or no such agent", body = ApiError),
    )
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let pool = state.store.pool();
    let internal = |e: sqlx::Error| ApiError::internal(&e);
    let summary: AgentSummary = sqlx::query_as(&format!("{SUMMARY} WHERE a.name = $2"))
        .bind(workspace.as_str())
        .bind(&name)
        .fetch_optional(pool)
        .await
        .map_err(internal)?
        .ok_or_else(|| ApiError::not_found(format!("no agent {name} is registered")))?;
    let memory: Vec<MemoryEntry> = sqlx::query_as(
        "SELECT key, value, recorded_at, position AS sequence FROM proj_agent_state.memory
         WHERE workspace = $1 AND agent = $2 ORDER BY position DESC LIMIT $3",
    )
    .bind(workspace.as_str())
    .bind(&name)
    .bind(MEMORY_LIMIT)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let action_items: Vec<ActionItemView> = sqlx::query_as(
        "SELECT id, retrospective_id, text, status, assigned_at, completed_at, outcome
         FROM proj_retrospectives.action_items
         WHERE workspace = $1 AND agent = $2 ORDER BY assigned_at DESC, id",
    )
    .bind(workspace.as_str())
    .bind(&name)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    let dead_letter_list: Vec<DeadLetterView> = sqlx::query_as(
        "SELECT id, event_position AS sequence, event_type, deliveries, error, failed_at
         FROM dead_letters
         WHERE workspace = $1 AND agent = $2 AND resolved_at IS NULL
         ORDER BY failed_at DESC LIMIT $3",
    )
    .bind(workspace.as_str())
    .bind(&name)
    .bind(DEAD_LETTER_LIMIT)
    .fetch_all(pool)
    .await
    .map_err(internal)?;
    Ok(Json(AgentDetail {
        summary,
        memory,
        action_items,
        dead_letter_list,
    })
    .into_response())
}
