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

/// A plan just submitted.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PlanSubmitted {
    /// The plan's id.
    id: String,
    /// Always `running`.
    #[schema(example = "running")]
    status: &'static str,
    /// How many tasks it has.
    tasks: usize,
}

/// Submits a plan
///
/// 201 with the plan's id once `plan.submitted.v1` is committed; 422 naming every problem
/// (unknown dependency, duplicate id, unknown role, a cycle: `details` lists them all) and
/// nothing appended. Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/plans",
    tag = "plans",
    operation_id = "submit_plan",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content = crate::openapi::PlanSpec, content_type = "application/json"),
    responses(
        (status = 201, description = "Submitted; the orchestrator runs it", body = PlanSubmitted),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 403, description = "Scope below `propose`", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 409, description = "A plan with this id exists (`plan_exists`)", body = ApiError),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", body = ApiError),
        (status = 422, description = "Not a valid plan; `details` lists every problem", body = ApiError),
    )
)]
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
            Json(PlanSubmitted {
                id,
                status: "running",
                tasks: spec.tasks.len(),
            }),
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only plans in this state: `running`, `succeeded`, `aborted` or `cancelled`.
    status: Option<String>,
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// The list of plans.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PlanList {
    #[serde(serialize_with = "crate::sorted_keys")]
    plans: Vec<PlanRow>,
}

/// A row of the list (the `workflows` projection).
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
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

/// Lists plans
///
/// Newest first (the `workflows` projection). Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/plans",
    tag = "plans",
    operation_id = "list_plans",
    params(("ws" = String, Path, description = "The workspace"), ListQuery),
    responses(
        (status = 200, description = "The plans", body = PlanList),
        (status = 400, description = "An unknown status, or a malformed limit", body = ApiError),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
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
    Ok(Json(PlanList { plans }).into_response())
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

/// A plan, with every task's state
///
/// Folded from its stream, never behind. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/plans/{id}",
    tag = "plans",
    operation_id = "get_plan",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The plan"),
    ),
    responses(
        (status = 200, description = "The plan", body = crate::openapi::PlanView),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace or plan", body = ApiError),
    )
)]
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

/// Body of a cancellation (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct CancelBody {
    /// Recorded with the cancellation.
    reason: Option<String>,
}

/// A cancellation just asked for.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct PlanCancelling {
    /// The plan.
    id: String,
    /// Always `cancelling`.
    #[schema(example = "cancelling")]
    status: &'static str,
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

/// Cancels a running plan
///
/// Appends `plan.cancelled.v1`; 202: the orchestrator closes the plan. The body is optional.
/// Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/plans/{id}/cancel",
    tag = "plans",
    operation_id = "cancel_plan",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The plan"),
    ),
    request_body(content = Option<CancelBody>, content_type = "application/json"),
    responses(
        (status = 202, description = "Asked; the orchestrator closes the plan", body = PlanCancelling),
        (status = 400, description = "Not JSON, or an unknown field", body = ApiError),
        (status = 403, description = "Scope below `propose`", body = ApiError),
        (status = 404, description = "No such workspace or plan", body = ApiError),
        (status = 409, description = "The plan has finished (`plan_finished`), or changed meanwhile (`conflict`)", body = ApiError),
    )
)]
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
        Json(PlanCancelling {
            id,
            status: "cancelling",
        }),
    )
        .into_response())
}

/// Body of a resolution.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ResolveBody {
    /// `retry` the task, `skip` it, or `abort` the plan.
    #[schema(pattern = "^(retry|skip|abort)$", example = "retry")]
    action: String,
    /// Recorded with the resolution.
    comment: Option<String>,
}

/// A resolution just recorded.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct TaskResolved {
    /// `retry`, `skip` or `abort`.
    action: String,
    plan_id: String,
    task_id: String,
}

/// Resolves an escalated task
///
/// `retry`, `skip` or `abort`: only for an escalated task of a running plan. Appends
/// `task.resolved.v1`; 202: the orchestrator acts on it. Scope `approve`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/plans/{id}/tasks/{task}/resolve",
    tag = "plans",
    operation_id = "resolve_task",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The plan"),
        ("task" = String, Path, description = "The escalated task"),
    ),
    request_body(content = ResolveBody, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded; the orchestrator acts on it", body = TaskResolved),
        (status = 400, description = "Not JSON, or no valid action", body = ApiError),
        (status = 403, description = "Scope below `approve`", body = ApiError),
        (status = 404, description = "No such workspace, plan or task", body = ApiError),
        (status = 409, description = "The task is not escalated (`not_escalated`), or the plan changed meanwhile", body = ApiError),
    )
)]
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
        Json(TaskResolved {
            action: body.action,
            plan_id: id,
            task_id: task,
        }),
    )
        .into_response())
}
