//! The CloudEvents HTTP binding: structured, binary and batch mode in; the event log out.

use axum::body::Bytes;
use axum::{
    Extension, Json,
    extract::{
        Path, Query, State,
        rejection::{BytesRejection, QueryRejection},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_events::{
    BatchError, Cursor, EventType, NewEvent, Workspace, binary_attributes, is_json_media_type,
    parse_batch, parse_event,
};
use switchyard_store::{Appended, ReadFilter};

use crate::{ApiError, AppState, Principal, Scope, error::parse_json};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// What the store did with one posted event.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AppendedView {
    /// The event's id.
    id: String,
    /// Its stream.
    subject: String,
    /// Its global sequence.
    sequence: i64,
    /// Its version in its stream.
    stream_version: u64,
    /// Whether it was stored before (same source and id): then nothing was appended.
    duplicate: bool,
}

/// What the store did with what was posted: one event's outcome, or a batch's.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)] // describes the two answers; each is built as itself
pub(crate) enum AppendedOutcome {
    /// Structured or binary mode.
    One(AppendedView),
    /// Batch mode.
    Batch(AppendedBatch),
}

/// What the store did with a posted batch, in the batch's order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AppendedBatch {
    #[serde(serialize_with = "crate::sorted_keys")]
    events: Vec<AppendedView>,
}

impl From<Appended> for AppendedView {
    fn from(a: Appended) -> Self {
        Self {
            id: a.id.to_string(),
            subject: a.stream.to_string(),
            sequence: a.position,
            stream_version: a.stream_version,
            duplicate: a.duplicate,
        }
    }
}

/// Types that only Switchyard writes, each through its own route or agent, where the rules
/// that give them meaning are enforced (a decision names exactly what was approved, by whom,
/// once). Accepting them here would let a `propose` token forge an approval.
pub(crate) fn owned_elsewhere(ty: &str) -> Option<&'static str> {
    Some(match ty {
        "workspace.created.v1" => "POST /v1/workspaces",
        "workspace.configured.v1" => "PUT /v1/workspaces/{ws}/settings",
        "proposal.created.v1" => "POST /v1/workspaces/{ws}/proposals",
        "proposal.approved.v1" | "proposal.rejected.v1" => {
            "POST /v1/workspaces/{ws}/proposals/{id}/approve|reject, or /switchyard comments"
        }
        "proposal.merged.v1" | "proposal.closed.v1" | "github.command.v1" => "the github agent",
        "git.commit.v1" | "git.commit_failed.v1" => "the git agent",
        "agent.registered.v1" | "agent.failed.v1" => "the agent runtime",
        "plan.submitted.v1" | "plan.cancelled.v1" => {
            "POST /v1/workspaces/{ws}/plans and …/plans/{id}/cancel"
        }
        "task.resolved.v1" => "POST /v1/workspaces/{ws}/plans/{id}/tasks/{task}/resolve",
        "task.dispatched.v1" | "task.branched.v1" | "task.escalated.v1" | "plan.finished.v1" => {
            "the orchestrator"
        }
        "task.timed_out.v1" => "the deadline watcher",
        "strategy.updated.v1" | "milestone.completed.v1" => "the strategy agent",
        "coach.nudge.v1" => "the coach agent",
        "agent.action_item.completed.v1" => "the agent the action item is assigned to",
        "retrospective.completed.v1" | "agent.action_item.assigned.v1" => {
            "the retrospective agent (start one: POST /v1/workspaces/{ws}/retrospectives)"
        }
        "artifact.updated.v1" | "artifact.consumed.v1" => {
            "the producing and consuming agents, under config/artifacts.yaml"
        }
        t if t.starts_with("github.") => "POST /v1/github/webhook",
        _ => return None,
    })
}

/// Posts events
///
/// The CloudEvents HTTP binding: structured mode (`application/cloudevents+json`), batch mode
/// (`application/cloudevents-batch+json`, all or nothing), or binary mode (`ce-*` headers and
/// the data as a JSON body). `data` must match the schema of `type`; types that Switchyard
/// writes itself are refused. 201 once committed; 200 when every event was a duplicate.
/// Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/events",
    tag = "events",
    operation_id = "post_events",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content(
        (crate::openapi::CloudEvent = "application/cloudevents+json"),
        (Vec<crate::openapi::CloudEvent> = "application/cloudevents-batch+json"),
        (Object = "application/json"),
    ), description = "One event, a batch, or (binary mode, with `ce-specversion`, `ce-id`, `ce-source`, `ce-type`… headers) the data of one"),
    responses(
        (status = 201, description = "Appended: one event's outcome (structured or binary mode), or a batch's", body = AppendedOutcome),
        (status = 200, description = "Every event was a duplicate; nothing appended", body = AppendedOutcome),
        (status = 400, description = "Not JSON, a malformed CloudEvent (`invalid_event`), an unknown type (`unknown_event_type`)", body = ApiError),
        (status = 403, description = "Scope below `propose`, or a type Switchyard writes itself (`reserved_type`)", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
        (status = 409, description = "The stream is not at `expectedversion`", body = ApiError),
        (status = 413, description = "Body over `api.max_event_body_bytes`, or batch over `api.max_batch_events`", body = ApiError),
        (status = 415, description = "Neither structured, batch nor binary mode", body = ApiError),
        (status = 422, description = "`data` does not match its schema (`schema_violation`)", body = ApiError),
        (status = 503, description = "The store is unavailable (`Retry-After`)", body = ApiError),
    )
)]
pub(crate) async fn post_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let body = body?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();

    let (events, batch) = if essence == STRUCTURED {
        (vec![parse_event(parse_json(&body)?, &workspace)?], false)
    } else if essence == BATCH {
        let events = parse_batch(
            parse_json(&body)?,
            &workspace,
            state.config.max_batch_events,
        )
        .map_err(|e| match e {
            BatchError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "batch_too_large",
                e.to_string(),
            ),
            BatchError::Event(e) => ApiError::from(e),
            other => ApiError::bad_request(other.to_string()).at(""),
        })?;
        (events, true)
    } else if headers.contains_key("ce-specversion") {
        (
            vec![parse_binary(&headers, content_type, &body, &workspace)?],
            false,
        )
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!(
                "send {STRUCTURED}, {BATCH}, or binary mode (ce-* headers with a JSON body); got {:?}",
                content_type
            ),
        ));
    };

    for (i, event) in events.iter().enumerate() {
        if let Some(route) = owned_elsewhere(event.ty.as_str()) {
            let error = ApiError::forbidden(format!(
                "{} events are written by Switchyard itself ({route}), not through the events API",
                event.ty
            ))
            .with_code("reserved_type");
            return Err(if batch {
                error.at(format!("/{i}/type"))
            } else {
                error.at("/type")
            });
        }
    }
    // An agent's source is its own: only a registered external agent emits as
    // `/agents/<name>`, and only the types it declared.
    let mut emitters: Vec<(String, Result<Vec<String>, String>)> = Vec::new();
    for (i, event) in events.iter().enumerate() {
        let Some(name) = event.source.as_str().strip_prefix("/agents/") else {
            continue;
        };
        let name = name.split('/').next().unwrap_or_default().to_owned();
        let known = match emitters.iter().find(|(n, _)| *n == name) {
            Some((_, known)) => known.clone(),
            None => {
                let known = crate::agents::external_emitter(&state, &name).await;
                emitters.push((name.clone(), known.clone()));
                known
            }
        };
        let refused = match known {
            Err(why) => Some(why),
            Ok(emits) if !emits.iter().any(|t| t == event.ty.as_str()) => Some(format!(
                "agent {name} did not declare {} in its emits ({}); re-register it with PUT /v1/agents/{name}",
                event.ty,
                emits.join(", ")
            )),
            Ok(_) => None,
        };
        if let Some(why) = refused {
            let error = ApiError::forbidden(why).with_code("not_your_source");
            return Err(if batch {
                error.at(format!("/{i}/source"))
            } else {
                error.at("/source")
            });
        }
    }
    let appended = state
        .store
        .append(events)
        .await
        .map_err(|e| ApiError::from_store(e, batch))?;
    let status = if appended.iter().all(|a| a.duplicate) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let views: Vec<AppendedView> = appended.into_iter().map(AppendedView::from).collect();
    Ok(if batch {
        (status, Json(AppendedBatch { events: views })).into_response()
    } else {
        let view = views.into_iter().next();
        (status, Json(view)).into_response()
    })
}

/// Binary mode: attributes in `ce-*` headers (percent-decoded), the data in the body, its
/// media type in `Content-Type`. The attributes then follow the structured-mode rules.
fn parse_binary(
    headers: &HeaderMap,
    content_type: &str,
    body: &[u8],
    workspace: &Workspace,
) -> Result<NewEvent, ApiError> {
    let mut attrs = binary_attributes(
        headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes())),
    )?;
    if !content_type.is_empty() {
        if !is_json_media_type(content_type) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("event data must be JSON; got Content-Type {content_type:?}"),
            ));
        }
        attrs.insert(
            "datacontenttype".into(),
            Value::String(content_type.to_owned()),
        );
    }
    if !body.is_empty() {
        let data = serde_json::from_slice(body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("the body (the event's data) is not valid JSON: {e}"),
            )
            .at("/data")
        })?;
        attrs.insert("data".into(), data);
    }
    Ok(parse_event(Value::Object(attrs), workspace)?)
}

/// Query of `GET /v1/workspaces/{ws}/events`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct EventsQuery {
    /// Events after this cursor (`next` of the previous page); from the start when absent.
    after: Option<String>,
    /// Only events of this type.
    #[serde(rename = "type")]
    ty: Option<String>,
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// A page of the event log.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct EventPage {
    /// The events, in global order.
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = Vec<crate::openapi::CloudEvent>)]
    events: Vec<switchyard_events::cloudevents::Event>,
    /// The cursor of the next page (`after`).
    next: String,
}

/// Reads the event log
///
/// A workspace's events in global order, as CloudEvents, a page at a time. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/events",
    tag = "events",
    operation_id = "list_events",
    params(("ws" = String, Path, description = "The workspace"), EventsQuery),
    responses(
        (status = 200, description = "A page", body = EventPage),
        (status = 400, description = "A malformed cursor, type or limit", body = ApiError),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
pub(crate) async fn list_events(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    query: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    let after: Cursor = match query.after.as_deref() {
        None | Some("") => Cursor::START,
        Some(s) => s
            .parse()
            .map_err(|e: switchyard_events::InvalidCursor| ApiError::bad_request(e.to_string()))?,
    };
    let ty = query
        .ty
        .as_deref()
        .map(EventType::parse)
        .transpose()
        .map_err(ApiError::from)?;
    let limit = state.config.page(query.limit);
    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: Some(workspace),
        ty,
    };
    let page = state
        .store
        .read_all(after, &filter, limit)
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    let events: Vec<_> = page.events.iter().map(|e| e.to_cloudevent()).collect();
    Ok(Json(EventPage {
        events,
        next: page.next.to_string(),
    })
    .into_response())
}
