//! Proposals: submit, list, show with history, approve, reject.

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_events::{Source, StreamId, Workspace};
use switchyard_proposals::{
    Decision, DecisionError, Draft, Proposal, Status, decide, fold, propose, stream,
};
use switchyard_store::Error as StoreError;

use crate::{
    ApiError, AppState, Principal, Scope,
    error::{optional_body, parse_json},
};

/// Fields the server owns: a body that carries one is refused, not honoured.
const SERVER_OWNED: &[&str] = &[
    "id",
    "proposal_id",
    "status",
    "content_hash",
    "author",
    "approved_by",
    "rejected_by",
    "created_at",
    "history",
];

fn decision_error(e: DecisionError) -> ApiError {
    match e {
        DecisionError::AlreadyDecided { .. } => {
            ApiError::new(StatusCode::CONFLICT, "already_decided", e.to_string())
        }
        DecisionError::HashMismatch { .. } => {
            ApiError::new(StatusCode::CONFLICT, "content_mismatch", e.to_string())
                .at("/content_hash")
        }
        DecisionError::Invalid { pointer, message } => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_proposal",
            message,
        )
        .at(pointer),
        other => ApiError::bad_request(other.to_string()),
    }
}

fn api_source() -> Result<Source, ApiError> {
    Source::parse("/api").map_err(ApiError::from)
}

/// `POST /v1/workspaces/{ws}/proposals`
pub(crate) async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let body = parse_json(&body?)?;
    if let Value::Object(map) = &body
        && let Some(field) = SERVER_OWNED.iter().find(|f| map.contains_key(**f))
    {
        return Err(ApiError::bad_request(format!(
            "{field} is set by the server and may not be supplied"
        ))
        .at(format!("/{field}")));
    }
    let draft: Draft = serde_json::from_value(body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_proposal",
            e.to_string(),
        )
    })?;
    let (id, event) =
        propose(&workspace, &api_source()?, &principal.name, &draft).map_err(decision_error)?;
    let hash = event.data["content_hash"].clone();
    state.store.append(vec![event]).await.map_err(|e| {
        let mut error = ApiError::from_store(e, false);
        error.strip_pointer_prefix("/data");
        error
    })?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": id, "status": "pending", "content_hash": hash})),
    )
        .into_response())
}

/// A row of the list (the `proposals` projection).
#[derive(Debug, serde::Serialize, sqlx::FromRow)]
pub(crate) struct ProposalRow {
    id: String,
    title: String,
    author: String,
    status: String,
    content_hash: String,
    created_at: chrono::DateTime<chrono::Utc>,
    decided_by: Option<String>,
    reason: Option<String>,
    commit_sha: Option<String>,
}

/// Query of the list.
#[derive(Debug, Deserialize)]
pub(crate) struct ListQuery {
    status: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/workspaces/{ws}/proposals?status=…`
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
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "status must be pending, approved, rejected, committed, failed, merged or closed",
            )
        })?),
    };
    let limit = state.config.page(query.limit);
    let proposals: Vec<ProposalRow> = sqlx::query_as(
        "SELECT id, title, author, status, content_hash, created_at, decided_by, reason, commit_sha
         FROM proj_proposals.proposals
         WHERE workspace = $1 AND ($2::text IS NULL OR status = $2)
         ORDER BY status <> 'pending', created_at DESC
         LIMIT $3",
    )
    .bind(workspace.as_str())
    .bind(status.map(Status::as_str))
    .bind(i64::from(limit))
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "proposals": proposals })).into_response())
}

async fn load(state: &AppState, workspace: &Workspace, id: &str) -> Result<Proposal, ApiError> {
    let missing = || ApiError::not_found(format!("proposal {id} does not exist"));
    let stream = StreamId::parse(&stream(id)).map_err(|_| missing())?;
    let events = state
        .store
        .read_stream(workspace, &stream, 0, 10_000)
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    fold(&events).ok_or_else(missing)
}

/// `GET /v1/workspaces/{ws}/proposals/{id}` — read from its stream, with its history.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    Ok(Json(load(&state, &workspace, &id).await?).into_response())
}

/// Body of an approval.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ApproveBody {
    comment: Option<String>,
    content_hash: Option<String>,
}

/// Body of a rejection.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RejectBody {
    reason: String,
}

/// The channel a decision came through: `X-Switchyard-Channel` (`api`, `cli`, `dashboard`).
fn channel(headers: &HeaderMap) -> Result<&'static str, ApiError> {
    match headers
        .get("x-switchyard-channel")
        .map(|v| v.to_str().unwrap_or_default())
    {
        None | Some("api") => Ok("api"),
        Some("cli") => Ok("cli"),
        Some("dashboard") => Ok("dashboard"),
        Some(other) => Err(ApiError::bad_request(format!(
            "unknown channel {other:?}: api, cli or dashboard"
        ))),
    }
}

async fn decide_route(
    state: &AppState,
    principal: &Principal,
    workspace: &str,
    id: &str,
    headers: &HeaderMap,
    decision: Decision,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(principal, workspace, Scope::Approve)
        .await?;
    let channel = channel(headers)?;
    let proposal = load(state, &workspace, id).await?;
    if matches!(decision, Decision::Approve { .. })
        && !state.config.allow_self_approval
        && proposal.proposal["author"].as_str() == Some(principal.name.as_str())
    {
        return Err(ApiError::forbidden(format!(
            "{} proposed {id} and may not approve it too (api.allow_self_approval is off)",
            principal.name
        ))
        .with_code("self_approval"));
    }
    let event = decide(
        &proposal,
        &workspace,
        &api_source()?,
        &principal.name,
        channel,
        &decision,
    )
    .map_err(decision_error)?;
    let status = if matches!(decision, Decision::Approve { .. }) {
        "approved"
    } else {
        "rejected"
    };
    match state.store.append(vec![event]).await {
        Ok(_) => Ok(Json(
            json!({"id": proposal.id, "status": status, "content_hash": proposal.content_hash,
                                "by": principal.name, "channel": channel}),
        )
        .into_response()),
        // Someone else decided between our read and our append.
        Err(StoreError::Conflict { .. }) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "already_decided",
            format!("proposal {id} was decided concurrently; a decision is taken once"),
        )),
        Err(e) => Err(ApiError::from_store(e, false)),
    }
}

/// `POST /v1/workspaces/{ws}/proposals/{id}/approve`
pub(crate) async fn approve(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let body: ApproveBody = optional_body(&body)?;
    let decision = Decision::Approve {
        comment: body.comment,
        content_hash: body.content_hash,
    };
    decide_route(&state, &principal, &workspace, &id, &headers, decision).await
}

/// `POST /v1/workspaces/{ws}/proposals/{id}/reject`
pub(crate) async fn reject(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body: RejectBody = serde_json::from_value(parse_json(&body?)?).map_err(|e| {
        ApiError::bad_request(format!("{e}: a rejection needs a reason")).at("/reason")
    })?;
    if body.reason.trim().is_empty() {
        return Err(ApiError::bad_request("a rejection needs a reason").at("/reason"));
    }
    decide_route(
        &state,
        &principal,
        &workspace,
        &id,
        &headers,
        Decision::Reject {
            reason: body.reason,
        },
    )
    .await
}
