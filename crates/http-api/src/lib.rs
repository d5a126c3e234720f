//! The HTTP API: `/v1` routes for workspaces and the CloudEvents HTTP binding, the schema
//! catalog, and health. Handlers are thin: parse at the edge, call the store, map the result.
//!
//! Every route is described in OpenAPI 3.1 from its handler's `#[utoipa::path]` ([`openapi`],
//! served at `GET /openapi.json`): the router is built from the same description.
//!
//! Invariants it owns: every `/v1` route but the GitHub webhook needs a live bearer token; a request is answered 2xx
//! only after its events are committed; every error has the shape
//! `{"code", "message", "pointer"?}` and appends nothing.

mod agents;
mod artifacts;
mod auth;
mod dashboard;
mod diff;
mod error;
mod events;
mod github;
mod messages;
mod openapi;
mod ops;
mod plans;
mod proposals;
mod roster;
mod serve;
mod timeline;
mod tokens;
mod workspaces;

pub use agents::{AgentBus, REGISTRAR};

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::{DefaultBodyLimit, Path, State},
    http::StatusCode,
    middleware,
    response::{IntoResponse, Response},
};
use serde::{Deserialize, Serialize};
use serde_json::json;
use switchyard_events::{RecordedEvent, StreamId, Workspace};
use switchyard_store::EventStore;
use tower_http::trace::TraceLayer;

pub use artifacts::{Period, trigger as retrospective_trigger};
pub use auth::{
    BootstrapError, MIN_TOKEN_LEN, Principal, Scope, bootstrap_admin_token, token_hash,
};
pub use error::ApiError;
pub use github::{CatchUpReport, MAX_WEBHOOK_BODY, WEBHOOK_PATH, catch_up};
pub use openapi::openapi;
pub use ops::{Ops, OpsError};
pub use serve::{ServeLimits, serve};
pub use tokens::{
    NewToken, TokenError, TokenInfo, create_token, list_tokens, parse_expiry, revoke_token,
};

/// Limits and defaults of the HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Largest body accepted by the events route (a batch), in bytes.
    pub max_event_body_bytes: usize,
    /// Largest body accepted by other routes, in bytes.
    pub max_body_bytes: usize,
    /// Most events in one CloudEvents batch.
    pub max_batch_events: usize,
    /// Page size when a list request names none.
    pub default_page: u32,
    /// Largest page a list request may ask for; larger requests are capped.
    pub max_page: u32,
    /// Whether the author of a proposal (the token's name) may approve it too.
    pub allow_self_approval: bool,
    /// A request (body included) must be answered within this many seconds, else 408.
    pub request_timeout_secs: u64,
    /// Failed authentications allowed per client address and minute, after a burst.
    pub auth_failures_per_minute: u32,
    /// Failed authentications allowed at once per client address.
    pub auth_failure_burst: u32,
    /// How long a valid token is trusted without asking the database again, in milliseconds
    /// (0: ask every time). A token revoked through another instance works there this long.
    pub token_cache_ms: u64,
    /// A trace viewer's address for one trace, `{trace_id}` standing for the id (e.g.
    /// `http://127.0.0.1:16686/trace/{trace_id}` for Jaeger): the dashboard links each
    /// event's trace there. `None`: it shows the trace id only.
    pub trace_url: Option<String>,
}

impl ApiConfig {
    /// The page size of a list request: what it asked for, capped, or the default.
    pub fn page(&self, asked: Option<u32>) -> u32 {
        asked
            .unwrap_or(self.default_page)
            .clamp(1, self.max_page.max(1))
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            max_event_body_bytes: 4 * 1024 * 1024,
            max_body_bytes: 256 * 1024,
            max_batch_events: 1_000,
            default_page: 100,
            max_page: 1_000,
            allow_self_approval: false,
            request_timeout_secs: 30,
            auth_failures_per_minute: 60,
            auth_failure_burst: 20,
            token_cache_ms: 1_000,
            trace_url: None,
        }
    }
}

/// Serializes `value` the way `serde_json::json!` embeds it: through a [`serde_json::Value`],
/// whose object keys are sorted. Answers that were once built with `json!` and are typed now
/// keep their exact bytes (`#[serde(serialize_with = "crate::sorted_keys")]`).
pub(crate) fn sorted_keys<T: Serialize, S: serde::Serializer>(
    value: &T,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serde_json::to_value(value)
        .map_err(serde::ser::Error::custom)?
        .serialize(serializer)
}

/// What every handler shares. One `Arc`: axum clones the state for every extractor and
/// middleware of every request, and cloning and dropping its thirteen fields (`Arc`s, the
/// store's and the NATS client's own) one by one was 10 % of the server's CPU under
/// single-event appends.
#[derive(Debug, Clone)]
pub struct AppState(Arc<SharedState>);

impl std::ops::Deref for AppState {
    type Target = SharedState;

    fn deref(&self) -> &SharedState {
        &self.0
    }
}

/// The inside of [`AppState`].
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct SharedState {
    store: EventStore,
    nats: Option<async_nats::Client>,
    config: Arc<ApiConfig>,
    /// Workspaces known to exist. Workspaces are never deleted, so a hit is always right.
    known_workspaces: Arc<RwLock<HashSet<Workspace>>>,
    /// The running machinery, for the ops routes.
    ops: Option<Arc<dyn Ops>>,
    /// The GitHub webhook secret; webhooks are refused without one.
    webhook_secret: Option<Arc<WebhookSecret>>,
    /// The GitHub client, for the delivery catch-up.
    github: Option<Arc<switchyard_github::GitHubHost>>,
    /// Failed authentications per client address.
    auth_failures: Arc<auth::AuthFailures>,
    /// Valid tokens seen lately.
    token_cache: Arc<auth::TokenCache>,
    /// The observability mode, for `GET/PUT /v1/ops/mode`.
    modes: Option<Arc<switchyard_telemetry::Modes>>,
    /// The artifact contracts and the agents they are held against.
    artifacts: Option<Arc<ArtifactSetup>>,
    /// The built-in agents and where the relay publishes, for external agents.
    agent_bus: Option<Arc<AgentBus>>,
    /// Commit notifications for the live timeline.
    live: Arc<timeline::LiveFeed>,
}

/// The artifact contracts and what the running agents say about artifacts.
#[derive(Debug)]
pub(crate) struct ArtifactSetup {
    pub(crate) contracts: Arc<switchyard_artifacts::Contracts>,
    pub(crate) agents: Vec<switchyard_artifacts::AgentArtifacts>,
}

/// A webhook secret, kept out of logs and `Debug`.
pub struct WebhookSecret(secrecy::SecretString);

impl WebhookSecret {
    /// Wraps a secret.
    pub fn new(secret: secrecy::SecretString) -> Self {
        Self(secret)
    }

    fn as_bytes(&self) -> &[u8] {
        use secrecy::ExposeSecret as _;
        self.0.expose_secret().as_bytes()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

impl std::fmt::Debug for dyn Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ops")
    }
}

impl AppState {
    /// State over a store and, for readiness, a NATS client.
    pub fn new(store: EventStore, nats: Option<async_nats::Client>, config: ApiConfig) -> Self {
        Self(Arc::new(SharedState {
            store,
            nats,
            auth_failures: Arc::new(auth::AuthFailures::new(
                config.auth_failures_per_minute,
                config.auth_failure_burst,
            )),
            token_cache: Arc::new(auth::TokenCache::new(Duration::from_millis(
                config.token_cache_ms,
            ))),
            config: Arc::new(config),
            known_workspaces: Arc::default(),
            ops: None,
            webhook_secret: None,
            github: None,
            modes: None,
            artifacts: None,
            agent_bus: None,
            live: Arc::default(),
        }))
    }

    /// The inside, to plug something in (before the state is shared: otherwise a copy).
    fn plug(&mut self) -> &mut SharedState {
        Arc::make_mut(&mut self.0)
    }

    /// Plugs in the agent bus: the built-in agents' names (which external agents cannot
    /// take) and the relay's stream and subject prefix (the consumers they pull from).
    #[must_use]
    pub fn with_agent_bus(mut self, bus: AgentBus) -> Self {
        self.plug().agent_bus = Some(Arc::new(bus));
        self
    }

    /// Plugs in the artifact contracts (the artifacts routes, and the check of a workspace's
    /// `artifacts` settings against `agents`).
    #[must_use]
    pub fn with_artifacts(
        mut self,
        contracts: Arc<switchyard_artifacts::Contracts>,
        agents: Vec<switchyard_artifacts::AgentArtifacts>,
    ) -> Self {
        self.plug().artifacts = Some(Arc::new(ArtifactSetup { contracts, agents }));
        self
    }

    /// Plugs in the observability mode (`/v1/ops/mode`).
    #[must_use]
    pub fn with_modes(mut self, modes: Arc<switchyard_telemetry::Modes>) -> Self {
        self.plug().modes = Some(modes);
        self
    }

    /// Turns on `POST /v1/github/webhook`, checking signatures with `secret`.
    #[must_use]
    pub fn with_webhook_secret(mut self, secret: WebhookSecret) -> Self {
        self.plug().webhook_secret = Some(Arc::new(secret));
        self
    }

    /// Plugs in the GitHub client (for `POST /v1/github/catch-up`).
    #[must_use]
    pub fn with_github(mut self, github: Arc<switchyard_github::GitHubHost>) -> Self {
        self.plug().github = Some(github);
        self
    }

    /// Plugs in the ops routes.
    #[must_use]
    pub fn with_ops(mut self, ops: Arc<dyn Ops>) -> Self {
        self.plug().ops = Some(ops);
        self
    }

    /// The `workspace.created.v1` event of a workspace, if it exists.
    async fn workspace(&self, workspace: &Workspace) -> Result<Option<RecordedEvent>, ApiError> {
        let stream = StreamId::parse(workspaces::WORKSPACE_STREAM).map_err(ApiError::from)?;
        let events = self
            .store
            .read_stream(workspace, &stream, 0, 1)
            .await
            .map_err(|e| ApiError::from_store(e, false))?;
        Ok(events.into_iter().next())
    }

    /// Parses a workspace from a path, checks the caller's right to it, and that it exists.
    /// A workspace the caller may not see answers exactly like a missing one.
    async fn existing_workspace(
        &self,
        principal: &Principal,
        raw: &str,
        scope: Scope,
    ) -> Result<Workspace, ApiError> {
        let missing = || ApiError::not_found(format!("workspace {raw} does not exist"));
        let workspace = Workspace::parse(raw).map_err(|_| missing())?;
        principal.require(Some(&workspace), scope)?;
        let known = self
            .known_workspaces
            .read()
            .map(|set| set.contains(&workspace))
            .unwrap_or(false);
        if !known {
            self.workspace(&workspace).await?.ok_or_else(missing)?;
            if let Ok(mut set) = self.known_workspaces.write() {
                set.insert(workspace.clone());
            }
        }
        Ok(workspace)
    }
}

/// The whole HTTP API. The routes come from [`openapi::routes`], which describes them too.
pub fn router(state: AppState) -> Router {
    let config = Arc::clone(&state.config);
    let openapi::Routes {
        public,
        webhook,
        authenticated,
        events,
    } = openapi::routes();
    let events = events.layer(DefaultBodyLimit::max(config.max_event_body_bytes));
    let v1 = authenticated
        .layer(DefaultBodyLimit::max(config.max_body_bytes))
        .merge(events)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ));
    // Authenticated by its signature, not a token; the body is read up to GitHub's limit, and
    // a larger declared length is refused before any of it is read.
    let webhook = webhook
        .layer(DefaultBodyLimit::max(github::MAX_WEBHOOK_BODY))
        .route_layer(middleware::from_fn(refuse_large_webhooks));
    let (routes, _described) = public.merge(webhook).merge(v1).split_for_parts();
    routes
        .fallback(|| async { ApiError::not_found("no such route") })
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            Duration::from_secs(config.request_timeout_secs.max(1)),
        ))
        .layer(middleware::from_fn(record_http))
        .layer(TraceLayer::new_for_http().make_span_with(http_span))
        .with_state(state)
}

/// The span of a request: `http.request`, continuing the caller's trace (`traceparent`).
fn http_span(request: &axum::http::Request<axum::body::Body>) -> tracing::Span {
    // The process's CPU and memory ride on every request's span (read once a second).
    let (cpu, memory) = switchyard_telemetry::process_figures_cached().unwrap_or_default();
    let span = tracing::info_span!(
        "http.request",
        http.method = %request.method(),
        http.target = %request.uri().path(),
        process.cpu_seconds = cpu,
        process.memory_bytes = memory,
    );
    let traceparent = request
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok());
    switchyard_telemetry::continue_from(&span, traceparent);
    span
}

/// Records each request's latency by method, matched route (the pattern, never the raw path)
/// and status.
async fn record_http(request: axum::extract::Request, next: middleware::Next) -> Response {
    let method: &'static str = match *request.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        axum::http::Method::PUT => "PUT",
        axum::http::Method::DELETE => "DELETE",
        axum::http::Method::PATCH => "PATCH",
        axum::http::Method::HEAD => "HEAD",
        axum::http::Method::OPTIONS => "OPTIONS",
        _ => "other",
    };
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    switchyard_telemetry::metrics().http_request(
        method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

async fn refuse_large_webhooks(
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    if github::declared_too_large(request.headers(), github::MAX_WEBHOOK_BODY) {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!(
                "the body is larger than {} bytes, GitHub's limit",
                github::MAX_WEBHOOK_BODY
            ),
        )
        .into_response();
    }
    next.run(request).await
}

/// `GET /healthz`'s answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    status: &'static str,
}

/// The process is up
///
/// No token needed.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "health",
    operation_id = "healthz",
    responses((status = 200, description = "The process is up", body = Health))
)]
async fn healthz() -> Response {
    Json(Health { status: "ok" }).into_response()
}

/// `GET /readyz`'s answer: `ok`, or what is wrong, per dependency.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct Readiness {
    /// `ok`, or why NATS is not reachable.
    #[schema(example = "ok")]
    nats: String,
    /// `ok`, or why PostgreSQL is not reachable.
    #[schema(example = "ok")]
    postgres: String,
}

/// PostgreSQL and NATS are reachable
///
/// No token needed. 503 names what is wrong.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "health",
    operation_id = "readyz",
    responses(
        (status = 200, description = "PostgreSQL and NATS are reachable", body = Readiness),
        (status = 503, description = "PostgreSQL or NATS is not reachable", body = Readiness),
    )
)]
async fn readyz(State(state): State<AppState>) -> Response {
    let postgres = match tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query("SELECT 1").execute(state.store.pool()),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 2 s".to_owned()),
    };
    let nats = match &state.nats {
        None => Err("not configured".to_owned()),
        Some(client) => match client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            other => Err(format!("{other}")),
        },
    };
    let show = |r: &Result<(), String>| match r {
        Ok(()) => "ok".to_owned(),
        Err(e) => e.clone(),
    };
    let status = if postgres.is_ok() && nats.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(Readiness {
            nats: show(&nats),
            postgres: show(&postgres),
        }),
    )
        .into_response()
}

/// The schema catalog.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SchemaList {
    schemas: Vec<SchemaInfo>,
}

/// One event type of the catalog.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct SchemaInfo {
    /// Shipped with Switchyard (else loaded from the configured directory).
    builtin: bool,
    /// `urn:switchyard:event:<type>`, the `dataschema` of its events.
    dataschema: String,
    /// The schema's `description`.
    description: Option<String>,
    /// The event type.
    #[serde(rename = "type")]
    #[schema(value_type = String, example = "workspace.created.v1")]
    ty: switchyard_events::EventType,
}

/// The schema catalog
///
/// Every event type the server accepts, with where its JSON Schema is.
#[utoipa::path(
    get,
    path = "/v1/schemas",
    tag = "events",
    operation_id = "list_schemas",
    responses((status = 200, description = "The catalog", body = SchemaList))
)]
async fn list_schemas(State(state): State<AppState>) -> Response {
    let schemas: Vec<_> = state
        .store
        .catalog()
        .iter()
        .map(|s| SchemaInfo {
            builtin: matches!(s.origin(), switchyard_events::Origin::Builtin),
            dataschema: switchyard_events::schema_uri(s.event_type()),
            description: s.description().map(str::to_owned),
            ty: s.event_type().clone(),
        })
        .collect();
    Json(SchemaList { schemas }).into_response()
}

/// One event type's JSON Schema
///
/// The JSON Schema (draft 2020-12) that the `data` of events of this type must match.
#[utoipa::path(
    get,
    path = "/v1/schemas/{ty}",
    tag = "events",
    operation_id = "get_schema",
    params(("ty" = String, Path, description = "An event type, e.g. `workspace.created.v1`")),
    responses(
        (status = 200, description = "The JSON Schema", body = Object, content_type = "application/json"),
        (status = 404, description = "No such event type", body = ApiError),
    )
)]
async fn get_schema(
    State(state): State<AppState>,
    Path(ty): Path<String>,
) -> Result<Response, ApiError> {
    let schema = state
        .store
        .catalog()
        .get(&ty)
        .ok_or_else(|| ApiError::not_found(format!("no schema for event type {ty}")))?;
    Ok(Json(schema.document().clone()).into_response())
}

/// An agent was asked to run.
#[derive(Debug, Serialize, utoipa::ToSchema)]
struct AgentRunRequested {
    /// The agent.
    agent: String,
    /// The global sequence of the `agent.run_requested.v1`.
    sequence: Option<i64>,
}

/// Asks an agent to run now
///
/// Appends `agent.run_requested.v1`; 202: the agent does the work asynchronously. Scope
/// `propose`.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/agents/{agent}/run",
    tag = "agents",
    operation_id = "run_agent",
    params(
        ("ws" = String, Path, description = "The workspace"),
        ("agent" = String, Path, description = "The agent's name (`a-z`, `0-9`, `-`, `_`; up to 63)"),
    ),
    responses(
        (status = 202, description = "Asked; the agent runs asynchronously", body = AgentRunRequested),
        (status = 403, description = "The token's scope is below `propose`", body = ApiError),
        (status = 404, description = "No such workspace, or no agent of that name", body = ApiError),
        (status = 503, description = "The store is unavailable (`Retry-After`)", body = ApiError),
    )
)]
async fn run_agent(
    State(state): State<AppState>,
    axum::Extension(principal): axum::Extension<Principal>,
    Path((workspace, agent)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let workspace = state
        .existing_workspace(&principal, &workspace, Scope::Propose)
        .await?;
    if !agents::valid_name(&agent) {
        return Err(ApiError::not_found(format!("no agent named {agent:?}")));
    }
    let event = switchyard_events::NewEvent::new(
        workspace,
        switchyard_events::Source::parse("/api").map_err(ApiError::from)?,
        switchyard_events::EventType::parse("agent.run_requested.v1").map_err(ApiError::from)?,
        StreamId::parse(&format!("agent/{agent}/runs")).map_err(ApiError::from)?,
        json!({"agent": agent, "requested_by": principal.name}),
    );
    let appended = state
        .store
        .append(vec![event])
        .await
        .map_err(|e| ApiError::from_store(e, false))?;
    let sequence = appended.first().map(|a| a.position);
    Ok((
        StatusCode::ACCEPTED,
        Json(AgentRunRequested { agent, sequence }),
    )
        .into_response())
}
