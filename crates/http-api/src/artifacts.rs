//! Artifacts and retrospectives: the registry (versions, readers, staleness, content), the
//! retrospectives with their action items, metrics over time, and starting a retrospective
//! by hand.

use axum::{
    Extension, Json,
    extract::{Path, Query, State, rejection::QueryRejection},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Value, json};
use switchyard_artifacts::{Contracts, registry};
use switchyard_events::{EventType, NewEvent, Source, StreamId, Workspace};

use crate::{
    ApiError, AppState,
    auth::{Principal, Scope},
};

/// The contracts that hold in a workspace (the server's, with the workspace's overrides).
async fn contracts(state: &AppState, workspace: &Workspace) -> Result<Contracts, ApiError> {
    let base = state
        .artifacts
        .as_ref()
        .map(|a| a.contracts.as_ref().clone())
        .unwrap_or_default();
    let mut conn = state
        .store
        .pool()
        .acquire()
        .await
        .map_err(|e| ApiError::internal(&e))?;
    switchyard_artifacts::contracts_for(&mut conn, &base, workspace.as_str())
        .await
        .map_err(|e| ApiError::internal(&e))
}

/// `GET /v1/workspaces/{ws}/artifacts`
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let contracts = contracts(&state, &workspace).await?;
    let artifacts = registry::list(
        state.store.pool(),
        workspace.as_str(),
        &contracts,
        Utc::now(),
    )
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "artifacts": artifacts })).into_response())
}

/// `GET /v1/workspaces/{ws}/artifacts/{name}`: its versions and who read which.
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let contracts = contracts(&state, &workspace).await?;
    let pool = state.store.pool();
    let summary = registry::list(pool, workspace.as_str(), &contracts, Utc::now())
        .await
        .map_err(|e| ApiError::internal(&e))?
        .into_iter()
        .find(|a| a.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no artifact named {name:?}")))?;
    let versions = registry::versions(pool, workspace.as_str(), &name)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let reads: Vec<Value> = registry::reads(pool, workspace.as_str(), &name)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .into_iter()
        .map(|(consumer, version, read_at, event_id)| {
            json!({"consumer": consumer, "version": version, "read_at": read_at, "event_id": event_id})
        })
        .collect();
    Ok(Json(json!({"artifact": summary, "versions": versions, "reads": reads})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ContentQuery {
    version: Option<i64>,
}

/// `GET /v1/workspaces/{ws}/artifacts/{name}/content?version=`: the text (latest by default);
/// `ETag` is the content hash, `X-Switchyard-Artifact-Version` the version.
pub(crate) async fn content(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((workspace, name)): Path<(String, String)>,
    query: Result<Query<ContentQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    if query.version.is_some_and(|v| v < 1) {
        return Err(ApiError::bad_request("version starts at 1"));
    }
    let found = registry::content(state.store.pool(), workspace.as_str(), &name, query.version)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    let Some((version, hash, content)) = found else {
        return Err(ApiError::not_found(match query.version {
            Some(v) => format!("artifact {name:?} has no version {v}"),
            None => format!("artifact {name:?} has no version yet"),
        }));
    };
    let Some(content) = content else {
        return Err(ApiError::not_found(format!(
            "version {version} of {name:?} was published without its content"
        )));
    };
    Ok((
        [
            (
                header::CONTENT_TYPE,
                "text/markdown; charset=utf-8".to_owned(),
            ),
            (header::ETAG, format!("\"{hash}\"")),
            (
                header::HeaderName::from_static("x-switchyard-artifact-version"),
                version.to_string(),
            ),
        ],
        content,
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Window {
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRetrospective {
    /// Its id (a UUIDv7 when absent).
    retrospective_id: Option<String>,
    window: Option<Window>,
}

/// `POST /v1/workspaces/{ws}/retrospectives` (scope `propose`): a `retrospective.trigger.v1`
/// with reason `manual`; 202 with the retrospective's id. The body is optional:
/// `{"retrospective_id": "…", "window": {"from": "…", "to": "…"}}`.
pub(crate) async fn start(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    let request: StartRetrospective = if body.iter().all(u8::is_ascii_whitespace) {
        StartRetrospective {
            retrospective_id: None,
            window: None,
        }
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid body: {e}")))?
    };
    let event = trigger(
        workspace,
        "/api",
        &principal.name,
        request.retrospective_id,
        request.window.map(|w| (w.from, w.to)),
    )?;
    let id = event.data["retrospective_id"].clone();
    let appended = state.store.append(vec![event]).await.map_err(|e| {
        let mut error = ApiError::from_store(e, false);
        error.strip_pointer_prefix("/data");
        error
    })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"retrospective_id": id, "sequence": appended.first().map(|a| a.position)})),
    )
        .into_response())
}

/// A period's start and end, either open.
pub type Period = (Option<DateTime<Utc>>, Option<DateTime<Utc>>);

/// A manual `retrospective.trigger.v1`, as the API and the CLI append it.
pub fn trigger(
    workspace: Workspace,
    source: &str,
    requested_by: &str,
    id: Option<String>,
    window: Option<Period>,
) -> Result<NewEvent, ApiError> {
    let id = id.unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let mut data =
        json!({"retrospective_id": id, "reason": "manual", "requested_by": requested_by});
    match window {
        None | Some((None, None)) => {}
        Some((from, to)) => {
            let to = to.unwrap_or_else(Utc::now);
            let from = from
                .ok_or_else(|| ApiError::bad_request("window.from is required with window.to"))?;
            if from >= to {
                return Err(ApiError::bad_request(
                    "window.from must be before window.to",
                ));
            }
            data["window"] = json!({"from": from.to_rfc3339(), "to": to.to_rfc3339()});
        }
    }
    Ok(NewEvent::new(
        workspace,
        Source::parse(source).map_err(ApiError::from)?,
        EventType::parse("retrospective.trigger.v1").map_err(ApiError::from)?,
        StreamId::parse(&format!("retrospective/{id}"))
            .map_err(|_| ApiError::bad_request("retrospective_id is not valid"))?,
        data,
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ListQuery {
    limit: Option<u32>,
}

/// `GET /v1/workspaces/{ws}/retrospectives`: newest first, each with its action items and
/// where they stand.
pub(crate) async fn retrospectives(
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
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object(
                'retrospective_id', r.id, 'reason', r.reason, 'window_from', r.window_from,
                'window_to', r.window_to, 'completed_at', r.completed_at, 'event_id', r.event_id,
                'insights', r.insights, 'rejection_reasons', r.rejection_reasons,
                'action_items', COALESCE((
                    SELECT jsonb_agg(jsonb_build_object('id', a.id, 'agent', a.agent, 'text', a.text,
                        'action', a.action, 'status', a.status, 'completed_at', a.completed_at,
                        'outcome', a.outcome) ORDER BY a.id)
                    FROM proj_retrospectives.action_items a
                    WHERE a.workspace = r.workspace AND a.retrospective_id = r.id), '[]'::jsonb))
         FROM proj_retrospectives.retrospectives r
         WHERE r.workspace = $1 ORDER BY r.position DESC LIMIT $2",
    )
    .bind(workspace.as_str())
    .bind(i64::from(limit))
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "retrospectives": rows })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MetricsQuery {
    agent: Option<String>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
}

/// `GET /v1/workspaces/{ws}/metrics?agent=&from=&to=`: per retrospective whose period ends
/// in `[from, to]`, oldest first, each agent's metrics.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(workspace): Path<String>,
    query: Result<Query<MetricsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Read)
        .await?;
    let Query(query) = query?;
    let rows: Vec<Value> = sqlx::query_scalar(
        "SELECT jsonb_build_object('retrospective_id', m.retrospective_id, 'agent', m.agent,
                'window_from', m.window_from, 'window_to', m.window_to,
                'metrics', jsonb_object_agg(m.name, m.value))
         FROM proj_retrospectives.metrics m
         WHERE m.workspace = $1 AND ($2::text IS NULL OR m.agent = $2)
           AND ($3::timestamptz IS NULL OR m.window_to >= $3)
           AND ($4::timestamptz IS NULL OR m.window_to <= $4)
         GROUP BY m.retrospective_id, m.agent, m.window_from, m.window_to
         ORDER BY m.window_to, m.retrospective_id, m.agent LIMIT 10000",
    )
    .bind(workspace.as_str())
    .bind(query.agent)
    .bind(query.from)
    .bind(query.to)
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(json!({ "metrics": rows })).into_response())
}
