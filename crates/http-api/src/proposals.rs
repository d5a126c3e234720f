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
use serde_json::Value;
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

/// A proposal just created.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ProposalCreated {
    /// SHA-256 of what would be committed; an approval may name it.
    #[schema(value_type = String)]
    content_hash: Value,
    /// The proposal's id.
    id: String,
    /// Always `pending`.
    #[schema(example = "pending")]
    status: &'static str,
}

/// Proposes a change
///
/// Appends `proposal.created.v1`, authored by the token's name. Server-owned fields (`id`,
/// `status`, `content_hash`, `author`, …) may not be supplied. Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/proposals",
    tag = "proposals",
    operation_id = "create_proposal",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content = crate::openapi::ProposalDraft, content_type = "application/json"),
    responses(
        (status = 201, description = "Proposed; pending a decision", body = ProposalCreated),
        (status = 400, description = "Not JSON, or a server-owned field supplied", body = ApiError),
        (status = 403, description = "Scope below `propose`", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 409, description = "A proposal for this finding exists already", body = ApiError),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", body = ApiError),
        (status = 422, description = "Not a valid proposal (`invalid_proposal`, `schema_violation`)", body = ApiError),
    )
)]
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
        Json(ProposalCreated {
            content_hash: hash,
            id,
            status: "pending",
        }),
    )
        .into_response())
}

/// A row of the list (the `proposals` projection).
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct ProposalRow {
    id: String,
    /// One line.
    title: String,
    /// The name of the token that proposed it.
    author: String,
    #[schema(value_type = crate::openapi::ProposalStatus)]
    status: String,
    content_hash: String,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Who approved or rejected it.
    decided_by: Option<String>,
    /// Why it was rejected, or why its commit failed.
    reason: Option<String>,
    /// The commit, once committed.
    commit_sha: Option<String>,
}

/// Query of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only proposals in this state.
    #[param(value_type = Option<crate::openapi::ProposalStatus>)]
    status: Option<String>,
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// The list of proposals.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ProposalList {
    #[serde(serialize_with = "crate::sorted_keys")]
    proposals: Vec<ProposalRow>,
}

/// Lists proposals
///
/// Pending ones first, then newest first (the `proposals` projection, which may lag a little
/// behind the events). Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/proposals",
    tag = "proposals",
    operation_id = "list_proposals",
    params(("ws" = String, Path, description = "The workspace"), ListQuery),
    responses(
        (status = 200, description = "The proposals", body = ProposalList),
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
    Ok(Json(ProposalList { proposals }).into_response())
}

pub(crate) async fn load(
    state: &AppState,
    workspace: &Workspace,
    id: &str,
) -> Result<Proposal, ApiError> {
    let missing = || ApiError::not_found(format!("proposal {id} does not exist"));
    let stream = StreamId::parse(&stream(id)).map_err(|_| missing())?;
    let events = state
        .store
        .read_stream(workspace, &stream, 0, 10_000)
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    fold(&events).ok_or_else(missing)
}

/// A proposal, with its history
///
/// Folded from its stream, never behind. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/proposals/{id}",
    tag = "proposals",
    operation_id = "get_proposal",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The proposal"),
    ),
    responses(
        (status = 200, description = "The proposal", body = crate::openapi::ProposalView),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace or proposal", body = ApiError),
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
    Ok(Json(load(&state, &workspace, &id).await?).into_response())
}

/// Body of an approval (optional).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ApproveBody {
    /// Recorded with the decision.
    comment: Option<String>,
    /// The content hash the approver saw: refused (409 `content_mismatch`) if it differs.
    content_hash: Option<String>,
}

/// Body of a rejection.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct RejectBody {
    /// Why; not empty.
    #[schema(min_length = 1)]
    reason: String,
}

/// A decision just recorded.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct Decided {
    /// Who decided (the token's name).
    by: String,
    /// Through what: `api`, `cli` or `dashboard`.
    channel: &'static str,
    /// What was decided on.
    content_hash: String,
    /// The proposal.
    id: String,
    /// `approved` or `rejected`.
    #[schema(example = "approved")]
    status: &'static str,
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
        Ok(_) => Ok(Json(Decided {
            by: principal.name.clone(),
            channel,
            content_hash: proposal.content_hash,
            id: proposal.id,
            status,
        })
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

/// Approves a proposal
///
/// Appends `proposal.approved.v1`, naming the content hash approved; the git agent commits
/// it. Once only. The body is optional. Scope `approve`; the author may not approve their own
/// proposal unless `api.allow_self_approval`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/proposals/{id}/approve",
    tag = "proposals",
    operation_id = "approve_proposal",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The proposal"),
        ("X-Switchyard-Channel" = Option<String>, Header, description = "`api` (default), `cli` or `dashboard`"),
    ),
    request_body(content = Option<ApproveBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided", body = Decided),
        (status = 400, description = "Not JSON, an unknown field or channel", body = ApiError),
        (status = 403, description = "Scope below `approve`, or the author approving their own proposal (`self_approval`)", body = ApiError),
        (status = 404, description = "No such workspace or proposal", body = ApiError),
        (status = 409, description = "Decided already (`already_decided`), or the content changed since `content_hash` (`content_mismatch`)", body = ApiError),
        (status = 503, description = "The store is unavailable (`Retry-After`)", body = ApiError),
    )
)]
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

/// Rejects a proposal
///
/// Appends `proposal.rejected.v1` with the reason. Once only. Scope `approve`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/proposals/{id}/reject",
    tag = "proposals",
    operation_id = "reject_proposal",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("id" = String, Path, description = "The proposal"),
        ("X-Switchyard-Channel" = Option<String>, Header, description = "`api` (default), `cli` or `dashboard`"),
    ),
    request_body(content = RejectBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Decided", body = Decided),
        (status = 400, description = "Not JSON, an unknown field or channel, or no reason", body = ApiError),
        (status = 403, description = "Scope below `approve`, or the author approving their own proposal (`self_approval`)", body = ApiError),
        (status = 404, description = "No such workspace or proposal", body = ApiError),
        (status = 409, description = "Decided already (`already_decided`)", body = ApiError),
        (status = 503, description = "The store is unavailable (`Retry-After`)", body = ApiError),
    )
)]
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
