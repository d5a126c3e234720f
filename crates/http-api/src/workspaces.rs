//! Workspaces are event-sourced: creating one appends `workspace.created.v1` to the stream
//! `workspace` of that workspace; reading one reads that stream.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde_json::{Value, json};
use switchyard_events::{
    EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace,
};
use switchyard_store::Error as StoreError;

use crate::{ApiError, AppState, Principal, Scope, error::parse_json};

/// The stream that holds a workspace's own lifecycle.
pub(crate) const WORKSPACE_STREAM: &str = "workspace";
const CREATED: &str = "workspace.created.v1";
/// Holds Switchyard's own events (agent registrations); nobody may create it.
const RESERVED: &str = "system";

fn view(event: &RecordedEvent) -> Value {
    let mut view = event.data.clone();
    if let Value::Object(map) = &mut view {
        map.insert("created_at".into(), json!(event.time));
        map.insert("sequence".into(), json!(event.position));
    }
    view
}

/// The workspaces a token may see.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct WorkspaceList {
    /// Oldest first.
    #[schema(value_type = Vec<crate::openapi::WorkspaceView>)]
    workspaces: Vec<Value>,
}

/// Lists workspaces
///
/// Every workspace the token may see (one, for a workspace's token), oldest first, without
/// settings. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces",
    tag = "workspaces",
    operation_id = "list_workspaces",
    responses((status = 200, description = "The workspaces", body = WorkspaceList))
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let created = state
        .store
        .workspaces()
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    let workspaces = created
        .iter()
        .filter(|e| {
            principal
                .workspace
                .as_deref()
                .is_none_or(|mine| mine == e.workspace.as_str())
        })
        .map(view)
        .collect();
    Ok(Json(WorkspaceList { workspaces }).into_response())
}

/// Creates a workspace
///
/// The body is the data of `workspace.created.v1`, appended to the stream `workspace` of the
/// new workspace. Admin scope, for every workspace.
#[utoipa::path(
    post,
    path = "/v1/workspaces",
    tag = "workspaces",
    operation_id = "create_workspace",
    request_body(content = crate::openapi::NewWorkspace, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = crate::openapi::WorkspaceView),
        (status = 400, description = "Not JSON, or a missing, malformed or reserved `id`", body = ApiError),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 409, description = "The workspace exists already", body = ApiError),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", body = ApiError),
        (status = 422, description = "The body does not match `workspace.created.v1`", body = ApiError),
    )
)]
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(None, Scope::Admin)?;
    let data = parse_json(&body?)?;
    let id = match data.get("id") {
        Some(Value::String(id)) => {
            Workspace::parse(id).map_err(|e| ApiError::bad_request(e.to_string()).at("/id"))?
        }
        Some(_) => return Err(ApiError::bad_request("id must be a string").at("/id")),
        None => return Err(ApiError::bad_request("id is required").at("/id")),
    };
    if id.as_str() == RESERVED {
        return Err(ApiError::bad_request(format!(
            "workspace id {RESERVED:?} is reserved for Switchyard's own events"
        ))
        .at("/id"));
    }
    let event = NewEvent::new(
        id.clone(),
        Source::parse("/api").map_err(ApiError::from)?,
        EventType::parse(CREATED).map_err(ApiError::from)?,
        StreamId::parse(WORKSPACE_STREAM).map_err(ApiError::from)?,
        data,
    )
    .expecting(ExpectedVersion::NoStream);
    match state.store.append(vec![event]).await {
        Ok(_) => {}
        Err(StoreError::Conflict { .. }) => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "conflict",
                format!("workspace {id} already exists"),
            )
            .at("/id"));
        }
        Err(e) => {
            // Pointers into the event's data are pointers into this body.
            let mut error = ApiError::from_store(e, false);
            error.strip_pointer_prefix("/data");
            return Err(error);
        }
    }
    let created = state
        .workspace(&id)
        .await?
        .ok_or_else(|| ApiError::internal(&StoreError::Closed))?;
    Ok((StatusCode::CREATED, Json(view(&created))).into_response())
}

/// A workspace
///
/// As created, with its current settings.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}",
    tag = "workspaces",
    operation_id = "get_workspace",
    params(("ws" = String, Path, description = "The workspace")),
    responses(
        (status = 200, description = "The workspace", body = crate::openapi::WorkspaceView),
        (status = 403, description = "The token may not read it", body = ApiError),
        (status = 404, description = "No such workspace (or one the token may not see)", body = ApiError),
    )
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
) -> Result<Response, ApiError> {
    let workspace = Workspace::parse(&workspace).map_err(|e| ApiError::not_found(e.to_string()))?;
    principal.require(Some(&workspace), Scope::Read)?;
    let created = state
        .workspace(&workspace)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("workspace {workspace} does not exist")))?;
    let mut view = view(&created);
    view["settings"] = settings(&state, &workspace)
        .await?
        .unwrap_or_else(|| json!({"github_approvers": []}));
    Ok(Json(view).into_response())
}

const CONFIGURED: &str = "workspace.configured.v1";

/// The latest settings of a workspace (`workspace.configured.v1`), if any were set.
pub(crate) async fn settings(
    state: &AppState,
    workspace: &Workspace,
) -> Result<Option<Value>, ApiError> {
    sqlx::query_scalar(
        "SELECT data FROM events
         WHERE workspace = $1 AND stream_id = $2 AND type = $3
         ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(workspace.as_str())
    .bind(WORKSPACE_STREAM)
    .bind(CONFIGURED)
    .fetch_optional(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))
}

/// A workspace's settings after `PUT …/settings`.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct SettingsSet {
    /// The settings, as given.
    #[schema(value_type = crate::openapi::WorkspaceSettings)]
    settings: Value,
    /// The workspace.
    #[schema(value_type = String)]
    workspace: Workspace,
}

/// Replaces a workspace's settings
///
/// The body is the data of `workspace.configured.v1`: every setting, replacing the previous
/// ones. Artifact overrides are checked against the running agents. Admin scope.
#[utoipa::path(
    put,
    path = "/v1/workspaces/{ws}/settings",
    tag = "workspaces",
    operation_id = "put_workspace_settings",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content = crate::openapi::WorkspaceSettings, content_type = "application/json"),
    responses(
        (status = 200, description = "The settings are recorded", body = SettingsSet),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 403, description = "Not an admin token of this workspace", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", body = ApiError),
        (status = 422, description = "The body does not match `workspace.configured.v1`, or the artifact contracts do not hold (`invalid_contracts`)", body = ApiError),
    )
)]
pub(crate) async fn put_settings(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Admin)
        .await?;
    let data = parse_json(&body?)?;
    check_artifacts(&state, &workspace, &data)?;
    let event = NewEvent::new(
        workspace.clone(),
        Source::parse("/api").map_err(ApiError::from)?,
        EventType::parse(CONFIGURED).map_err(ApiError::from)?,
        StreamId::parse(WORKSPACE_STREAM).map_err(ApiError::from)?,
        data.clone(),
    );
    state.store.append(vec![event]).await.map_err(|e| {
        let mut error = ApiError::from_store(e, false);
        error.strip_pointer_prefix("/data");
        error
    })?;
    Ok(Json(SettingsSet {
        settings: data,
        workspace,
    })
    .into_response())
}

/// A workspace's `artifacts` overrides must leave contracts that hold against the running
/// agents, like the server's own at start: else 422 naming the artifact and the agent.
fn check_artifacts(
    state: &AppState,
    workspace: &Workspace,
    data: &serde_json::Value,
) -> Result<(), ApiError> {
    let Some(overrides) = data.get("artifacts") else {
        return Ok(());
    };
    let overrides: Vec<switchyard_artifacts::Override> = serde_json::from_value(overrides.clone())
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_contracts",
                format!("artifacts: {e}"),
            )
            .at("/artifacts")
        })?;
    let Some(setup) = &state.artifacts else {
        return Ok(());
    };
    setup
        .contracts
        .with_overrides(&overrides)
        .check(
            &setup.agents,
            &format!("the artifacts of workspace {workspace}"),
        )
        .map_err(|e| {
            ApiError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_contracts",
                e.to_string(),
            )
            .at("/artifacts")
        })
}
