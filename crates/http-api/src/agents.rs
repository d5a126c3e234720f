//! External agents: programs in any language that register a manifest over HTTP, consume
//! their types from JetStream and emit through the events API (`docs/external-agents.md`).
//!
//! A registration is the same `agent.registered.v1` event the built-in agents append (workspace
//! `system`, stream `agent/<name>`), with the source [`REGISTRAR`]. The events API lets a
//! source `/agents/<name>` through only for a registered external agent, and only with a type
//! of its `emits`.

use std::collections::BTreeSet;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{Path, State, rejection::BytesRejection},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_agent_runtime::{
    Manifest, RuntimeConfig, SYSTEM_WORKSPACE, consumer_name, ensure_consumer,
};
use switchyard_events::{
    EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace, type_filter,
};

use crate::{ApiError, AppState, Principal, Scope};

/// The source of registrations made over HTTP.
pub const REGISTRAR: &str = "/api/agents";

/// What the API needs to know about the agent bus: the built-in agents' names (taken), and
/// where the relay publishes (the consumers an external agent binds to).
#[derive(Debug, Clone)]
pub struct AgentBus {
    /// Names of the agents compiled into this server.
    pub builtin: BTreeSet<String>,
    /// The JetStream stream the relay publishes to.
    pub stream: String,
    /// The subject prefix: subjects are `<prefix>.<workspace>.<type>`.
    pub subject_prefix: String,
    /// The consumers' settings (`ack_wait_secs`, `max_deliver`), as for the built-in agents.
    pub runtime: RuntimeConfig,
}

/// The body of `PUT /v1/agents/{name}`: an external agent's manifest.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(crate) struct ManifestBody {
    version: String,
    #[serde(default)]
    capabilities: Vec<String>,
    #[serde(default)]
    subscribes: Vec<String>,
    #[serde(default)]
    emits: Vec<String>,
}

/// One durable consumer an agent pulls from.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct ConsumerView {
    /// The event type it delivers.
    #[serde(rename = "type")]
    ty: String,
    stream: String,
    durable: String,
    filter_subject: String,
}

/// A registered agent, and how it plugs in.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AgentView {
    name: String,
    version: String,
    capabilities: Vec<String>,
    subscribes: Vec<String>,
    emits: Vec<String>,
    manifest_hash: String,
    /// Registered over HTTP (`true`) or built into the server.
    external: bool,
    registered_at: String,
    /// The source its events must carry.
    source: String,
    consumers: Vec<ConsumerView>,
}

fn strings(data: &Value, key: &str) -> Vec<String> {
    data.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl AgentView {
    fn of(event: &RecordedEvent, bus: Option<&AgentBus>) -> Self {
        let data = &event.data;
        let name = text(data, "name");
        let subscribes = strings(data, "subscribes");
        let consumers = bus
            .map(|bus| {
                subscribes
                    .iter()
                    .filter_map(|t| EventType::parse(t).ok())
                    .map(|ty| ConsumerView {
                        durable: consumer_name(&name, &ty),
                        filter_subject: type_filter(&bus.subject_prefix, &ty),
                        stream: bus.stream.clone(),
                        ty: ty.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self {
            version: text(data, "version"),
            capabilities: strings(data, "capabilities"),
            emits: strings(data, "emits"),
            manifest_hash: text(data, "manifest_hash"),
            external: event.source.as_str() == REGISTRAR,
            registered_at: event.time.to_rfc3339(),
            source: format!("/agents/{name}"),
            subscribes,
            consumers,
            name,
        }
    }
}

/// An agent's name as `agent.registered.v1` allows it: 1-63 of `a-z 0-9 - _`, starting with a
/// letter or digit.
pub(crate) fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 63
        && (bytes[0].is_ascii_lowercase() || bytes[0].is_ascii_digit())
        && bytes
            .iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

fn system() -> Result<Workspace, ApiError> {
    Workspace::parse(SYSTEM_WORKSPACE).map_err(|e| ApiError::internal(&e))
}

fn agent_stream(name: &str) -> Result<StreamId, ApiError> {
    StreamId::parse(&format!("agent/{name}")).map_err(|e| ApiError::internal(&e))
}

/// The agent's last registration, with the stream's version.
async fn last_registration(
    state: &AppState,
    name: &str,
) -> Result<(u64, Option<RecordedEvent>), ApiError> {
    switchyard_agent_runtime::last_registration(&state.store, name)
        .await
        .map_err(|e| match e {
            switchyard_agent_runtime::Error::Store(e) => ApiError::from_store(e, false),
            other => ApiError::internal(&other),
        })
}

/// The registered external agent `name`, or why events from `/agents/<name>` are refused.
pub(crate) async fn external_emitter(state: &AppState, name: &str) -> Result<Vec<String>, String> {
    if state
        .agent_bus
        .as_ref()
        .is_some_and(|bus| bus.builtin.contains(name))
    {
        return Err(format!(
            "/agents/{name} is a built-in agent; only it emits as itself"
        ));
    }
    match last_registration(state, name).await {
        Ok((_, Some(event))) if event.source.as_str() == REGISTRAR => {
            Ok(strings(&event.data, "emits"))
        }
        Ok((_, Some(_))) => Err(format!(
            "/agents/{name} is a built-in agent; only it emits as itself"
        )),
        Ok((_, None)) => Err(format!(
            "no agent {name} is registered; register it first with PUT /v1/agents/{name}"
        )),
        Err(e) => Err(e.to_string()),
    }
}

/// Every registered agent.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct AgentList {
    agents: Vec<AgentView>,
}

/// `PUT /v1/agents/{name}`: registers (or re-registers) an external agent. 201 on the first
/// registration, 200 after (`agent.registered.v1` is appended only when the manifest changed).
#[utoipa::path(
    put,
    path = "/v1/agents/{name}",
    tag = "agents",
    operation_id = "register_agent",
    params(("name" = String, Path, description = "The agent's name: 1-63 of a-z, 0-9, '-', '_'")),
    request_body(content = ManifestBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered for the first time", body = AgentView),
        (status = 200, description = "Registered again (a new event only if the manifest changed)", body = AgentView),
        (status = 400, description = "A bad name or manifest (`invalid_manifest`)", body = ApiError),
        (status = 403, description = "Not an admin token of every workspace", body = ApiError),
        (status = 409, description = "A built-in agent's name (`builtin_agent`)", body = ApiError),
        (status = 422, description = "A type not in the catalog (`unknown_type`) or written by Switchyard itself (`reserved_type`)", body = ApiError),
        (status = 503, description = "JetStream cannot create the consumers now; try again", body = ApiError),
    )
)]
pub(crate) async fn register(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    principal.require(None, Scope::Admin)?;
    if !valid_name(&name) {
        return Err(ApiError::bad_request(format!(
            "agent name {name:?}: use 1-63 of a-z, 0-9, '-' and '_', starting with a letter or digit"
        ))
        .at("/name"));
    }
    let body: ManifestBody = serde_json::from_slice(&body?).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_manifest",
            format!("the manifest is not valid: {e}"),
        )
    })?;
    let bus = state.agent_bus.as_deref();
    if bus.is_some_and(|bus| bus.builtin.contains(&name)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "builtin_agent",
            format!("{name} is a built-in agent of this server; choose another name"),
        ));
    }
    let subscribes = catalog_types(&state, &body.subscribes, "subscribes")?;
    let emits = catalog_types(&state, &body.emits, "emits")?;
    if let Some((i, route)) = emits
        .iter()
        .enumerate()
        .find_map(|(i, ty)| Some((i, crate::events::owned_elsewhere(ty.as_str())?)))
    {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "reserved_type",
            format!(
                "{} events are written by Switchyard itself ({route}); an agent cannot emit them",
                emits[i]
            ),
        )
        .at(format!("/emits/{i}")));
    }
    let manifest = Manifest {
        name: name.clone(),
        version: body.version,
        capabilities: body.capabilities,
        subscribes,
        emits,
        produces: Vec::new(),
        consumes: Vec::new(),
    };
    let hash = manifest.hash();
    // The consumers first (also when the manifest is unchanged, should one have been
    // deleted): an agent told it is registered finds them.
    ensure_consumers(&state, &manifest).await?;
    // Two registrations of one agent at once: the loser reads the winner's and decides again.
    for _ in 0..4 {
        let (version, last) = last_registration(&state, &name).await?;
        if let Some(last) = &last {
            if last.source.as_str() != REGISTRAR {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    "builtin_agent",
                    format!("{name} was registered by a built-in agent; choose another name"),
                ));
            }
            if last.data.get("manifest_hash").and_then(Value::as_str) == Some(hash.as_str()) {
                return Ok((StatusCode::OK, Json(AgentView::of(last, bus))).into_response());
            }
        }
        let event = NewEvent::new(
            system()?,
            Source::parse(REGISTRAR).map_err(|e| ApiError::internal(&e))?,
            EventType::parse("agent.registered.v1").map_err(|e| ApiError::internal(&e))?,
            agent_stream(&name)?,
            manifest.registration(),
        )
        .expecting(ExpectedVersion::Exactly(version));
        match state.store.append(vec![event]).await {
            Ok(_) => {
                let (_, Some(registered)) = last_registration(&state, &name).await? else {
                    return Err(ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        "the registration was appended but cannot be read back",
                    ));
                };
                tracing::info!(agent = %name, version = %manifest.version, "external agent registered");
                let status = if last.is_none() {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                return Ok((status, Json(AgentView::of(&registered, bus))).into_response());
            }
            Err(switchyard_store::Error::Conflict { .. }) => continue,
            Err(e) => return Err(ApiError::from_store(e, false)),
        }
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "conflict",
        format!("agent {name} is being registered concurrently; try again"),
    ))
}

/// The types of a manifest's `field`, each of the catalog (else 422 `unknown_type` with its
/// pointer).
fn catalog_types(
    state: &AppState,
    types: &[String],
    field: &str,
) -> Result<Vec<EventType>, ApiError> {
    let catalog = state.store.catalog();
    types
        .iter()
        .enumerate()
        .map(|(i, ty)| {
            let at = format!("/{field}/{i}");
            let ty = EventType::parse(ty).map_err(|e| ApiError::from(e).at(at.clone()))?;
            if catalog.get(ty.as_str()).is_none() {
                return Err(ApiError::new(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "unknown_type",
                    format!("{ty} is not in the event catalog (GET /v1/schemas)"),
                )
                .at(at));
            }
            Ok(ty)
        })
        .collect()
}

/// Creates the agent's durable consumers on the relay's stream, when missing.
async fn ensure_consumers(state: &AppState, manifest: &Manifest) -> Result<(), ApiError> {
    let (Some(bus), Some(nats)) = (state.agent_bus.as_deref(), state.nats.as_ref()) else {
        return Ok(());
    };
    let jetstream = async_nats::jetstream::new(nats.clone());
    for ty in &manifest.subscribes {
        ensure_consumer(
            &jetstream,
            &bus.stream,
            &bus.subject_prefix,
            &manifest.name,
            ty,
            &bus.runtime,
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                format!("cannot create the consumer of {ty} on JetStream: {e}; try again"),
            )
        })?;
    }
    Ok(())
}

/// `GET /v1/agents/{name}`: an agent's registration and the consumers it pulls from.
#[utoipa::path(
    get,
    path = "/v1/agents/{name}",
    tag = "agents",
    operation_id = "show_agent",
    params(("name" = String, Path, description = "The agent's name")),
    responses(
        (status = 200, description = "Its last registration and consumers", body = AgentView),
        (status = 404, description = "No such agent", body = ApiError),
    )
)]
pub(crate) async fn show(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    principal.require(None, Scope::Read)?;
    if !valid_name(&name) {
        return Err(ApiError::not_found(format!("no agent {name:?}")));
    }
    match last_registration(&state, &name).await? {
        (_, Some(event)) => {
            Ok(Json(AgentView::of(&event, state.agent_bus.as_deref())).into_response())
        }
        (_, None) => Err(ApiError::not_found(format!(
            "no agent {name} is registered"
        ))),
    }
}

/// `GET /v1/agents`: every registered agent, built-in and external, by name.
#[utoipa::path(
    get,
    path = "/v1/agents",
    tag = "agents",
    operation_id = "list_agents",
    responses(
        (status = 200, description = "Every registered agent, built-in and external, by name", body = AgentList),
        (status = 403, description = "A token of one workspace", body = ApiError),
    )
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require(None, Scope::Read)?;
    let system = system()?;
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT substr(stream_id, 7) FROM events
         WHERE workspace = $1 AND type = 'agent.registered.v1' AND stream_id LIKE 'agent/%'
         ORDER BY 1",
    )
    .bind(system.as_str())
    .fetch_all(state.store.pool())
    .await
    .map_err(|e| ApiError::internal(&e))?;
    let mut agents = Vec::with_capacity(names.len());
    for name in names {
        if let (_, Some(event)) = last_registration(&state, &name).await? {
            agents.push(AgentView::of(&event, state.agent_bus.as_deref()));
        }
    }
    Ok(Json(AgentList { agents }).into_response())
}
