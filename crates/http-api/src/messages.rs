//! Agent-to-agent messages, as people send and read them: `POST …/messages` sends one (as
//! `user:<token name>`), `GET …/messages` lists them with who acknowledged each.

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
use switchyard_events::{EventType, NewEvent, Source, StreamId};

use crate::{ApiError, AppState, Principal, Scope, error::parse_json};

/// A message to send.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"to": "coach", "type": "note", "content": {"text": "the build is red"}}))]
pub(crate) struct SendBody {
    /// An agent's name, or `*` for every agent.
    to: String,
    /// What kind of message (`note` when absent).
    #[serde(rename = "type", default = "note")]
    #[schema(default = "note")]
    kind: String,
    /// The message itself: any JSON.
    content: Value,
    /// The message this one answers.
    reply_to: Option<String>,
}

/// A message just sent.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MessageSent {
    /// Its id (a UUIDv7).
    message_id: String,
}

fn note() -> String {
    "note".into()
}

/// Sends a message
///
/// As `user:<token name>`; 201 once `agent.message.sent.v1` is committed. Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/messages",
    tag = "messages",
    operation_id = "send_message",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content = SendBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Sent", body = MessageSent),
        (status = 400, description = "Not JSON", body = ApiError),
        (status = 403, description = "Scope below `propose`", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 413, description = "The body is larger than `api.max_body_bytes`", body = ApiError),
        (status = 422, description = "Not a valid message (`invalid_message`, `schema_violation`)", body = ApiError),
    )
)]
pub(crate) async fn send(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let body: SendBody = serde_json::from_value(parse_json(&body?)?).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_message",
            e.to_string(),
        )
    })?;
    let message_id = uuid::Uuid::now_v7().to_string();
    let mut data = json!({
        "message_id": message_id, "sender": format!("user:{}", principal.name),
        "recipient": body.to, "type": body.kind, "content": body.content,
    });
    if let Some(reply_to) = body.reply_to {
        data["reply_to"] = json!(reply_to);
    }
    let event = NewEvent::new(
        workspace,
        Source::parse("/api").map_err(ApiError::from)?,
        EventType::parse("agent.message.sent.v1").map_err(ApiError::from)?,
        StreamId::parse(&format!("message/{message_id}")).map_err(ApiError::from)?,
        data,
    );
    state.store.append(vec![event]).await.map_err(|e| {
        let mut error = ApiError::from_store(e, false);
        error.strip_pointer_prefix("/data");
        error
    })?;
    Ok((StatusCode::CREATED, Json(MessageSent { message_id })).into_response())
}

/// Query of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only messages to this recipient.
    recipient: Option<String>,
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// The list of messages.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MessageList {
    #[serde(serialize_with = "crate::sorted_keys")]
    messages: Vec<MessageRow>,
}

/// A message, with who acknowledged it (the `agent_state` projection).
#[derive(Debug, serde::Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub(crate) struct MessageRow {
    message_id: String,
    sender: String,
    recipient: String,
    #[serde(rename = "type")]
    kind: String,
    content: Value,
    reply_to: Option<String>,
    sent_at: chrono::DateTime<chrono::Utc>,
    acknowledged_by: Vec<String>,
}

/// Lists messages
///
/// Newest first, each with the agents that acknowledged it. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/messages",
    tag = "messages",
    operation_id = "list_messages",
    params(("ws" = String, Path, description = "The workspace"), ListQuery),
    responses(
        (status = 200, description = "The messages", body = MessageList),
        (status = 400, description = "A malformed query", body = ApiError),
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
    let limit = state.config.page(query.limit);
    let messages: Vec<MessageRow> = sqlx::query_as(
        "SELECT m.message_id, m.sender, m.recipient, m.kind, m.content, m.reply_to, m.sent_at,
                coalesce(array_agg(a.agent ORDER BY a.agent) FILTER (WHERE a.agent IS NOT NULL), '{}') AS acknowledged_by
         FROM proj_agent_state.messages m
         LEFT JOIN proj_agent_state.message_acks a
                ON a.workspace = m.workspace AND a.message_id = m.message_id
         WHERE m.workspace = $1 AND ($2::text IS NULL OR m.recipient = $2)
         GROUP BY m.workspace, m.message_id
         ORDER BY max(m.position) DESC LIMIT $3",
    )
    .bind(workspace.as_str())
    .bind(query.recipient.as_deref())
    .bind(i64::from(limit))
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(MessageList { messages }).into_response())
}
