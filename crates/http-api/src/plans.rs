//! Plans: submit a task graph, list, show every task's state, cancel, resolve an escalation.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_events::{EventType, ExpectedVersion, NewEvent, Source, StreamId, Workspace};
use switchyard_store::Error as StoreError;
use switchyard_workflows::{
    PlanSpec, PlanState, PlanStatus, TaskStatus, load, registry, served_roles, stream, types,
    validate,
};

use crate::{
    ApiError, AppState, Principal, Scope,
    error::{optional_body, parse_json},
};

fn event(
    workspace: &Workspace,
    ty: &str,
    plan_id: &str,
    data: Value,
) -> Result<NewEvent, ApiError> {
    Ok(NewEvent::new(
        workspace.clone(),
        Source::parse("/api").map_err(ApiError::from)?,
        EventType::parse(ty).map_err(ApiError::from)?,
        StreamId::parse(&stream(plan_id)).map_err(ApiError::from)?,
        data,
    ))
}

/// `POST /v1/workspaces/{ws}/plans`: 201 with the plan's id once `plan.submitted.v1` is
/// committed; 422 naming every problem (unknown dependency, duplicate id, unknown role, a
/// cycle) and nothing appended.
pub(crate) async fn submit(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let body = parse_json(&body?)?;
    let mut spec: PlanSpec = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_plan",
            e.to_string(),
        )
    })?;
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let agents = registry(&mut conn)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    drop(conn);
    let issues = validate(&spec, &served_roles(&agents));
    if let Some(first) = issues.first() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            first.code,
            if issues.len() == 1 {
                first.message.clone()
            } else {
                format!("{} (and {} more problems)", first.message, issues.len() - 1)
            },
        )
        .at(first.pointer.clone())
        .with_details(json!(issues)));
    }
    let id = spec
        .id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    spec.id = Some(id.clone());
    let submitted = event(
        &workspace,
        types::PLAN_SUBMITTED,
        &id,
        json!({"plan_id": id, "submitted_by": principal.name, "plan": spec}),
    )?
    .expecting(ExpectedVersion::NoStream);
    match state.store.append(vec![submitted]).await {
        Ok(_) => Ok((
            StatusCode::CREATED,
            Json(json!({"id": id, "status": "running", "tasks": spec.tasks.len()})),
        )
            .into_response()),
        Err(StoreError::Conflict { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "plan_exists",
            format!("plan {id} exists already"),
        )
        .at("/id")),
        Err(e) => {
            let mut error = ApiError::from_store(e, false);
            error.strip_pointer_prefix("/data/plan");
            Err(error)
        }
    }
}

/// Query of the list.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// A row of the list (the `workflows` projection).
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub(crate) struct PlanRow {
    id: String,
    title: String,
    status: String,
    submitted_by: String,
    submitted_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
    finished_at: Option<chrono::DateTime<chrono::Utc>>,
    tasks: i32,
    done: i32,
    escalated: i32,
}

/// `GET /v1/workspaces/{ws}/plans?status=running`: newest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    if let Some(status) = &query.status
        && !["running", "succeeded", "aborted", "cancelled"].contains(&status.as_str())
    {
        return Err(ApiError::bad_request(
            "status must be running, succeeded, aborted or cancelled",
        ));
    }
    let limit = state.config.page(query.limit);
    let plans: Vec<PlanRow> = sqlx::query_as(
        "SELECT id, title, status, submitted_by, submitted_at, updated_at, finished_at, tasks, done, escalated
         FROM proj_workflows.plans
         WHERE workspace = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY submitted_at DESC LIMIT $3",
    )
    .bind(workspace.as_str())
    .bind(query.status.as_deref())
    .bind(i64::from(limit))
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "plans": plans })).into_response())
}

async fn plan(state: &AppState, workspace: &Workspace, id: &str) -> Result<PlanState, ApiError> {
    let missing = || ApiError::not_found(format!("plan {id} does not exist"));
    if !switchyard_workflows::valid_id(id) {
        return Err(missing());
    }
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    load(&mut conn, workspace.as_str(), id)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .ok_or_else(missing)
}

/// `GET /v1/workspaces/{ws}/plans/{id}`: folded from its stream, never behind.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    Ok(Json(plan(&state, &workspace, &id).await?.view()).into_response())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CancelBody {
    reason: Option<String>,
}

async fn append_decided(state: &AppState, event: NewEvent, what: &str) -> Result<(), ApiError> {
    match state.store.append(vec![event]).await {
        Ok(_) => Ok(()),
        Err(StoreError::Conflict { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("{what} changed meanwhile; look again and retry"),
        )),
        Err(e) => Err(ApiError::from_store(e, false)),
    }
}

/// `POST /v1/workspaces/{ws}/plans/{id}/cancel`: 202; the orchestrator closes the plan.
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let body: CancelBody = optional_body(&body?)?;
    let current = plan(&state, &workspace, &id).await?;
    if current.status != PlanStatus::Running {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "plan_finished",
            format!("plan {id} is {} already", current.status.as_str()),
        ));
    }
    let cancelled = event(
        &workspace,
        types::PLAN_CANCELLED,
        &id,
        json!({"plan_id": id, "cancelled_by": principal.name, "reason": body.reason}),
    )?
    .expecting(ExpectedVersion::Exactly(current.version));
    append_decided(&state, cancelled, &format!("plan {id}")).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"id": id, "status": "cancelling"})),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResolveBody {
    action: String,
    comment: Option<String>,
}

/// `POST /v1/workspaces/{ws}/plans/{id}/tasks/{task}/resolve` with `retry`, `skip` or
/// `abort`: only for an escalated task.
pub(crate) async fn resolve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id, task)): Path<(String, String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Approve)
        .await?;
    let body: ResolveBody = serde_json::from_value(parse_json(&body?)?).map_err(|e| {
        ApiError::bad_request(format!("{e}: a resolution names an action")).at("/action")
    })?;
    if !["retry", "skip", "abort"].contains(&body.action.as_str()) {
        return Err(ApiError::bad_request("action must be retry, skip or abort").at("/action"));
    }
    let current = plan(&state, &workspace, &id).await?;
    let Some(task_state) = current.task(&task) else {
        return Err(ApiError::not_found(format!("plan {id} has no task {task}")));
    };
    if current.status != PlanStatus::Running || task_state.status != TaskStatus::Escalated {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "not_escalated",
            format!(
                "task {task} is {} (plan {}): only an escalated task is resolved",
                serde_json::to_value(task_state.status)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                current.status.as_str()
            ),
        ));
    }
    let resolved = event(
        &workspace,
        types::TASK_RESOLVED,
        &id,
        json!({"plan_id": id, "task_id": task, "action": body.action,
               "resolved_by": principal.name, "comment": body.comment}),
    )?
    .expecting(ExpectedVersion::Exactly(current.version));
    append_decided(&state, resolved, &format!("plan {id}")).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"plan_id": id, "task_id": task, "action": body.action})),
    )
        .into_response())
}
