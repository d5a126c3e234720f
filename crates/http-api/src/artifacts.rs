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

/// The artifacts of a workspace.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ArtifactList {
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = Vec<crate::openapi::ArtifactSummary>)]
    artifacts: Vec<registry::Summary>,
}

/// Lists artifacts
///
/// The declared ones (the server's contracts with the workspace's overrides) and any other
/// that has versions: latest version, readers, staleness. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/artifacts",
    tag = "artifacts",
    operation_id = "list_artifacts",
    params(("ws" = String, Path, description = "The workspace")),
    responses(
        (status = 200, description = "The artifacts", body = ArtifactList),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
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
    let contracts = contracts(&state, &workspace).await?;
    let artifacts = registry::list(
        state.store.pool(),
        workspace.as_str(),
        &contracts,
        Utc::now(),
    )
    .await
    .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(ArtifactList { artifacts }).into_response())
}

/// One read of an artifact.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ArtifactRead {
    /// The consumer.
    consumer: String,
    /// The `artifact.consumed.v1` event.
    event_id: String,
    /// When.
    read_at: DateTime<Utc>,
    /// The version read.
    version: i64,
}

/// An artifact with every version and every read.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct ArtifactDetail {
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = crate::openapi::ArtifactSummary)]
    artifact: registry::Summary,
    /// Newest first.
    reads: Vec<ArtifactRead>,
    /// Newest first.
    #[serde(serialize_with = "crate::sorted_keys")]
    #[schema(value_type = Vec<crate::openapi::ArtifactVersion>)]
    versions: Vec<registry::VersionRow>,
}

/// An artifact, its versions, and who read which
///
/// Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/artifacts/{name}",
    tag = "artifacts",
    operation_id = "get_artifact",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("name" = String, Path, description = "The artifact, e.g. `milestones.md`"),
    ),
    responses(
        (status = 200, description = "The artifact", body = ArtifactDetail),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace or artifact", body = ApiError),
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
    let reads: Vec<ArtifactRead> = registry::reads(pool, workspace.as_str(), &name)
        .await
        .map_err(|e| ApiError::internal(&e))?
        .into_iter()
        .map(|(consumer, version, read_at, event_id)| ArtifactRead {
            consumer,
            event_id,
            read_at,
            version,
        })
        .collect();
    Ok(Json(ArtifactDetail {
        artifact: summary,
        reads,
        versions,
    })
    .into_response())
}

/// Query of the content.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ContentQuery {
    /// The version (from 1); the latest when absent.
    #[param(minimum = 1)]
    version: Option<i64>,
}

/// An artifact's content
///
/// The text of one version (the latest by default). Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/artifacts/{name}/content",
    tag = "artifacts",
    operation_id = "get_artifact_content",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("name" = String, Path, description = "The artifact"),
        ContentQuery,
    ),
    responses(
        (status = 200, description = "The content", body = String, content_type = "text/markdown; charset=utf-8", headers(
            ("ETag" = String, description = "The content hash, quoted"),
            ("X-Switchyard-Artifact-Version" = i64, description = "The version"),
        )),
        (status = 400, description = "A version below 1, or an unknown query parameter", body = ApiError),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace, artifact or version, or a version published without its content", body = ApiError),
    )
)]
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

/// The period a retrospective looks at.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct Window {
    /// Required with `to`.
    from: Option<DateTime<Utc>>,
    /// Now when absent.
    to: Option<DateTime<Utc>>,
}

/// Body of a manual retrospective (optional).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct StartRetrospective {
    /// Its id (a UUIDv7 when absent).
    retrospective_id: Option<String>,
    /// The period; the retrospective agent's default when absent.
    window: Option<Window>,
}

/// A retrospective just asked for.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RetrospectiveStarted {
    /// Its id.
    #[schema(value_type = String)]
    retrospective_id: Value,
    /// The global sequence of its `retrospective.trigger.v1`.
    sequence: Option<i64>,
}

/// Starts a retrospective
///
/// Appends `retrospective.trigger.v1` with reason `manual`; 202 with the retrospective's id:
/// the retrospective agent does the work. The body is optional. Scope `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/retrospectives",
    tag = "retrospectives",
    operation_id = "start_retrospective",
    params(("ws" = String, Path, description = "The workspace")),
    request_body(content = Option<StartRetrospective>, content_type = "application/json"),
    responses(
        (status = 202, description = "Asked; the retrospective agent runs it", body = RetrospectiveStarted),
        (status = 400, description = "Not a valid body, an invalid id, or a window that ends before it starts", body = ApiError),
        (status = 403, description = "Scope below `propose`", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
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
        Json(RetrospectiveStarted {
            retrospective_id: id,
            sequence: appended.first().map(|a| a.position),
        }),
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

/// Query of the list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Page size (`api.default_page` when absent, at most `api.max_page`).
    limit: Option<u32>,
}

/// The retrospectives of a workspace.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct RetrospectiveList {
    #[schema(value_type = Vec<crate::openapi::Retrospective>)]
    retrospectives: Vec<Value>,
}

/// Lists retrospectives
///
/// Newest first, each with its action items and where they stand. Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/retrospectives",
    tag = "retrospectives",
    operation_id = "list_retrospectives",
    params(("ws" = String, Path, description = "The workspace"), ListQuery),
    responses(
        (status = 200, description = "The retrospectives", body = RetrospectiveList),
        (status = 400, description = "A malformed query", body = ApiError),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
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
    Ok(Json(RetrospectiveList {
        retrospectives: rows,
    })
    .into_response())
}

/// Query of the metrics.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(crate) struct MetricsQuery {
    /// Only this agent's.
    agent: Option<String>,
    /// Periods that end at or after this time.
    from: Option<DateTime<Utc>>,
    /// Periods that end at or before this time.
    to: Option<DateTime<Utc>>,
}

/// Agents' metrics over time.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub(crate) struct MetricsList {
    #[schema(value_type = Vec<crate::openapi::AgentMetrics>)]
    metrics: Vec<Value>,
}

/// Agents' metrics over time
///
/// Per retrospective whose period ends in `[from, to]`, oldest first, each agent's metrics.
/// Scope `read`.
#[utoipa::path(
    get,
    path = "/v1/workspaces/{ws}/metrics",
    tag = "retrospectives",
    operation_id = "list_metrics",
    params(("ws" = String, Path, description = "The workspace"), MetricsQuery),
    responses(
        (status = 200, description = "The metrics", body = MetricsList),
        (status = 400, description = "A malformed query", body = ApiError),
        (status = 403, description = "The token may not read this workspace", body = ApiError),
        (status = 404, description = "No such workspace", body = ApiError),
    )
)]
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
    Ok(Json(MetricsList { metrics: rows }).into_response())
}
