//! The operators' API: where the relay, the consumers and the projections stand, and the
//! dead-letter list. The machinery lives elsewhere; the binary plugs it in through [`Ops`].

use std::sync::Arc;

use axum::{
    Extension, Json,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use futures::future::BoxFuture;
use serde_json::Value;

use crate::{ApiError, AppState, Principal, Scope};

/// Why an ops action failed.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OpsError {
    /// The thing named does not exist (or is already resolved).
    #[error("{0}")]
    NotFound(String),
    /// The action ran and failed (e.g. the handler failed again).
    #[error("{0}")]
    Failed(String),
    /// Something broke underneath.
    #[error("{0}")]
    Internal(String),
}

/// What the ops routes ask of the running server.
pub trait Ops: Send + Sync + 'static {
    /// Store head, relay position and lag, consumers, projections.
    fn status(&self) -> BoxFuture<'_, Result<Value, OpsError>>;
    /// The dead-letter list.
    fn dead_letters(&self) -> BoxFuture<'_, Result<Value, OpsError>>;
    /// Retries one dead letter.
    fn retry_dead_letter(&self, id: uuid::Uuid) -> BoxFuture<'_, Result<Value, OpsError>>;
    /// The figures read at scrape time, for `GET /metrics`.
    fn snapshot(&self) -> BoxFuture<'_, Result<switchyard_telemetry::Snapshot, OpsError>>;
    /// Pauses (`Some(by)`) or resumes (`None`) the relay.
    fn pause_relay<'a>(&'a self, by: Option<&'a str>) -> BoxFuture<'a, Result<Value, OpsError>>;
}

impl From<OpsError> for ApiError {
    fn from(e: OpsError) -> Self {
        match e {
            OpsError::NotFound(m) => ApiError::not_found(m),
            OpsError::Failed(m) => ApiError::new(StatusCode::CONFLICT, "retry_failed", m),
            OpsError::Internal(m) => ApiError::internal(&OpsError::Internal(m)),
        }
    }
}

fn ops(state: &AppState, principal: &Principal) -> Result<Arc<dyn Ops>, ApiError> {
    principal.require(None, Scope::Admin)?;
    state
        .ops
        .clone()
        .ok_or_else(|| ApiError::not_found("ops are not available in this process"))
}

/// Where the machinery stands
///
/// Store head, relay position and lag, consumers, projections. Admin scope, every workspace.
#[utoipa::path(
    get,
    path = "/v1/ops/status",
    tag = "ops",
    operation_id = "ops_status",
    responses(
        (status = 200, description = "The status", body = crate::openapi::OpsStatus),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Ops are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn status(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(ops(&state, &principal)?.status().await?).into_response())
}

/// The dead-letter list
///
/// Events that an agent failed to handle `max_deliver` times. Admin scope, every workspace.
#[utoipa::path(
    get,
    path = "/v1/ops/dead-letters",
    tag = "ops",
    operation_id = "list_dead_letters",
    responses(
        (status = 200, description = "The unresolved dead letters", body = crate::openapi::DeadLetters),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Ops are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(ops(&state, &principal)?.dead_letters().await?).into_response())
}

/// Retries a dead letter
///
/// Runs the agent's handler on the event again, now. Admin scope, every workspace.
#[utoipa::path(
    post,
    path = "/v1/ops/dead-letters/{id}/retry",
    tag = "ops",
    operation_id = "retry_dead_letter",
    params(("id" = uuid::Uuid, Path, description = "The dead letter")),
    responses(
        (status = 200, description = "Handled; the dead letter is resolved", body = Object),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Ops are not available, or no such unresolved dead letter", body = ApiError),
        (status = 409, description = "The handler failed again (`retry_failed`)", body = ApiError),
    )
)]
pub(crate) async fn retry(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let ops = ops(&state, &principal)?;
    let id = uuid::Uuid::parse_str(&id)
        .map_err(|_| ApiError::not_found(format!("no dead letter {id}")))?;
    Ok(Json(ops.retry_dead_letter(id).await?).into_response())
}

/// Pauses the relay
///
/// The active relay, whichever instance it is on, publishes nothing until resumed; events are
/// still stored, and the relay lag grows. Admin scope, every workspace.
#[utoipa::path(
    post,
    path = "/v1/ops/relay/pause",
    tag = "ops",
    operation_id = "pause_relay",
    responses(
        (status = 200, description = "Paused", body = crate::openapi::RelayPaused),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Ops are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn pause_relay(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let ops = ops(&state, &principal)?;
    Ok(Json(ops.pause_relay(Some(&principal.name)).await?).into_response())
}

/// Resumes the relay
///
/// Admin scope, every workspace.
#[utoipa::path(
    post,
    path = "/v1/ops/relay/resume",
    tag = "ops",
    operation_id = "resume_relay",
    responses(
        (status = 200, description = "Resumed", body = crate::openapi::RelayPaused),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Ops are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn resume_relay(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    let ops = ops(&state, &principal)?;
    Ok(Json(ops.pause_relay(None).await?).into_response())
}

/// Prometheus metrics
///
/// OpenMetrics text; no token needed, and no workspace in any label.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "ops",
    operation_id = "metrics",
    responses(
        (status = 200, description = "The metrics", body = String, content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8"),
    )
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Response {
    let snapshot = match &state.ops {
        Some(ops) => match ops.snapshot().await {
            Ok(snapshot) => snapshot,
            Err(e) => {
                tracing::warn!(error = %e, "metrics: the scrape-time figures are unavailable");
                switchyard_telemetry::Snapshot::default()
            }
        },
        None => switchyard_telemetry::Snapshot::default(),
    };
    let snapshot = switchyard_telemetry::Snapshot {
        debug_mode: state
            .modes
            .as_ref()
            .is_some_and(|m| m.current().mode == switchyard_telemetry::Mode::Debug),
        ..snapshot
    };
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        switchyard_telemetry::render(&snapshot),
    )
        .into_response()
}

fn modes(
    state: &AppState,
    principal: &Principal,
) -> Result<Arc<switchyard_telemetry::Modes>, ApiError> {
    principal.require(None, Scope::Admin)?;
    state
        .modes
        .clone()
        .ok_or_else(|| ApiError::not_found("modes are not available in this process"))
}

/// The observability mode
///
/// `shipping` or `debug`, until when, and why. Admin scope, every workspace.
#[utoipa::path(
    get,
    path = "/v1/ops/mode",
    tag = "ops",
    operation_id = "get_mode",
    responses(
        (status = 200, description = "The mode", body = crate::openapi::ModeState),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Modes are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn get_mode(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    Ok(Json(modes(&state, &principal)?.current()).into_response())
}

/// Body of `PUT /v1/ops/mode`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"mode": "debug", "for_secs": 600}))]
pub(crate) struct ModeBody {
    /// The mode to switch to.
    #[schema(value_type = crate::openapi::Mode)]
    mode: switchyard_telemetry::Mode,
    /// A window after which the mode goes back to `shipping`, in seconds (clamped to 1 to
    /// 86 400).
    for_secs: Option<u64>,
}

/// Switches the observability mode
///
/// On this instance, without a restart. Admin scope, every workspace.
#[utoipa::path(
    put,
    path = "/v1/ops/mode",
    tag = "ops",
    operation_id = "put_mode",
    request_body(content = ModeBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Switched", body = crate::openapi::ModeState),
        (status = 400, description = "Not JSON, or not a mode", body = ApiError),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 404, description = "Modes are not available in this process", body = ApiError),
    )
)]
pub(crate) async fn put_mode(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    body: Result<axum::body::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<Response, ApiError> {
    let modes = modes(&state, &principal)?;
    let body: ModeBody =
        serde_json::from_value(crate::error::parse_json(&body?)?).map_err(|e| {
            ApiError::bad_request(format!("{e}: mode is debug or shipping")).at("/mode")
        })?;
    let window = body
        .for_secs
        .map(|s| std::time::Duration::from_secs(s.clamp(1, 86_400)));
    let reason = format!("set by {} through the ops API", principal.name);
    let current = modes
        .set(body.mode, window, &reason)
        .map_err(|e| ApiError::internal(&OpsError::Internal(e)))?;
    Ok(Json(current).into_response())
}
