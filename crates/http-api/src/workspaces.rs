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

/// `POST /v1/workspaces` — the body is the data of `workspace.created.v1`.
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

/// `GET /v1/workspaces/{ws}`
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
    Ok(Json(view(&created)).into_response())
}
