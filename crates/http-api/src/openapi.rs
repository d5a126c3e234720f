//! The API described as OpenAPI 3.1, from the same annotated handlers that [`crate::router`]
//! routes: both are built from [`routes`], so a route cannot be served without being described.
//! Served at `GET /openapi.json`; checked in at `docs/openapi.json` (a test keeps it current).
//!
//! The schemas below describe what handlers build as JSON values, and the shapes of types that
//! other crates own. They are never built: the tests in `tests/api/openapi.rs` validate real
//! answers against them, so a shape that drifts fails there.
#![allow(dead_code)] // the shapes below are described, never built

use std::sync::LazyLock;

use axum::{
    Json,
    response::{IntoResponse, Response},
};
use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::{
    OpenApi, ToSchema,
    openapi::{
        self, ContentBuilder, ResponseBuilder,
        security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme},
    },
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    ApiError, AppState, artifacts, events, github, messages, ops, plans, proposals, tokens,
    workspaces,
};

/// The name of the bearer security scheme.
pub(crate) const BEARER: &str = "bearer";

/// Every route, in groups by the layers [`crate::router`] puts around them.
pub(crate) struct Routes {
    /// No token: health, metrics, this document.
    pub(crate) public: OpenApiRouter<AppState>,
    /// Authenticated by its signature: the GitHub webhook.
    pub(crate) webhook: OpenApiRouter<AppState>,
    /// Bearer token; bodies up to `api.max_body_bytes`.
    pub(crate) authenticated: OpenApiRouter<AppState>,
    /// Bearer token; bodies up to `api.max_event_body_bytes` (a batch of events).
    pub(crate) events: OpenApiRouter<AppState>,
}

/// The routes and their descriptions. One `routes!` per path: every handler named in it is
/// served on the path its `#[utoipa::path]` declares, with the method it declares.
pub(crate) fn routes() -> Routes {
    let public = OpenApiRouter::new()
        .routes(routes!(crate::healthz))
        .routes(routes!(crate::readyz))
        .routes(routes!(ops::metrics))
        .routes(routes!(openapi_json));
    let webhook = OpenApiRouter::new().routes(routes!(github::webhook));
    let events = OpenApiRouter::new().routes(routes!(events::post_events, events::list_events));
    let authenticated = OpenApiRouter::new()
        .routes(routes!(workspaces::create))
        .routes(routes!(workspaces::get))
        .routes(routes!(workspaces::put_settings))
        .routes(routes!(crate::list_schemas))
        .routes(routes!(crate::get_schema))
        .routes(routes!(proposals::create, proposals::list))
        .routes(routes!(proposals::show))
        .routes(routes!(proposals::approve))
        .routes(routes!(proposals::reject))
        .routes(routes!(plans::submit, plans::list))
        .routes(routes!(plans::show))
        .routes(routes!(plans::cancel))
        .routes(routes!(plans::resolve))
        .routes(routes!(messages::send, messages::list))
        .routes(routes!(crate::run_agent))
        .routes(routes!(artifacts::list))
        .routes(routes!(artifacts::show))
        .routes(routes!(artifacts::content))
        .routes(routes!(artifacts::start, artifacts::retrospectives))
        .routes(routes!(artifacts::metrics))
        .routes(routes!(github::catch_up_route))
        .routes(routes!(tokens::create, tokens::list))
        .routes(routes!(tokens::revoke))
        .routes(routes!(ops::status))
        .routes(routes!(ops::dead_letters))
        .routes(routes!(ops::retry))
        .routes(routes!(ops::pause_relay))
        .routes(routes!(ops::resume_relay))
        .routes(routes!(ops::get_mode, ops::put_mode));
    Routes {
        public,
        webhook,
        authenticated,
        events,
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Switchyard",
        description = "The HTTP API of Switchyard, an event-sourced control plane. Every `/v1` \
            route but the GitHub webhook needs `Authorization: Bearer <token>`. A request is \
            answered 2xx only after its events are committed; every error has the shape of \
            `ApiError` and appends nothing. The guide is docs/api.md.",
    ),
    tags(
        (name = "workspaces", description = "Workspaces, created and configured through events."),
        (name = "events", description = "The CloudEvents HTTP binding, the event log, and the schema catalog."),
        (name = "proposals", description = "Changes to a workspace's repository that a person approves or rejects."),
        (name = "plans", description = "Task graphs run by the orchestrator."),
        (name = "messages", description = "Messages to and between agents."),
        (name = "agents", description = "Asking an agent to run."),
        (name = "artifacts", description = "The artifact registry: versions, readers, staleness, content."),
        (name = "retrospectives", description = "Retrospectives, their action items, and metrics over time."),
        (name = "tokens", description = "API tokens (admin)."),
        (name = "ops", description = "The operators' API and Prometheus metrics."),
        (name = "github", description = "GitHub webhook deliveries and their catch-up."),
        (name = "health", description = "Liveness, readiness, and this document."),
    ),
    components(schemas(ApiError))
)]
struct ApiDoc;

/// The whole API as OpenAPI 3.1.
pub fn openapi() -> openapi::OpenApi {
    document(routes())
}

fn document(routes: Routes) -> openapi::OpenApi {
    let Routes {
        public,
        webhook,
        authenticated,
        events,
    } = routes;
    let mut secured = authenticated.merge(events).into_openapi();
    for item in secured.paths.paths.values_mut() {
        for operation in operations(item) {
            // What `auth::require_token` guards needs a bearer token, and can answer 401 and 429.
            operation.security = Some(vec![SecurityRequirement::new(BEARER, Vec::<String>::new())]);
            let responses = &mut operation.responses.responses;
            responses.entry("401".into()).or_insert_with(|| {
                error_response(
                    "No token, or an unknown, revoked or expired one (`WWW-Authenticate: Bearer`)",
                )
            });
            responses.entry("429".into()).or_insert_with(|| {
                error_response("Too many failed authentications from this address (`Retry-After`)")
            });
        }
    }
    let mut webhook = webhook.into_openapi();
    for doc in [&mut secured, &mut webhook] {
        for item in doc.paths.paths.values_mut() {
            for operation in operations(item) {
                // PostgreSQL can fail underneath; the cause is logged, never answered.
                operation
                    .responses
                    .responses
                    .entry("500".into())
                    .or_insert_with(|| {
                        error_response("Internal error; the server log has the cause")
                    });
            }
        }
    }
    let mut doc = ApiDoc::openapi();
    doc.merge(public.into_openapi());
    doc.merge(webhook);
    doc.merge(secured);
    doc.info.version = env!("CARGO_PKG_VERSION").to_owned();
    doc.components
        .get_or_insert_with(openapi::Components::default)
        .add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token (`sy_…`), from `POST /v1/tokens`, `switchyard tokens create` \
                         or `SWITCHYARD_ADMIN_TOKEN`",
                    ))
                    .build(),
            ),
        );
    doc
}

/// Every operation of a path item.
fn operations(item: &mut openapi::PathItem) -> impl Iterator<Item = &mut openapi::path::Operation> {
    [
        &mut item.get,
        &mut item.put,
        &mut item.post,
        &mut item.delete,
        &mut item.options,
        &mut item.head,
        &mut item.patch,
        &mut item.trace,
    ]
    .into_iter()
    .filter_map(Option::as_mut)
}

fn error_response(description: &str) -> openapi::RefOr<openapi::Response> {
    ResponseBuilder::new()
        .description(description)
        .content(
            "application/json",
            ContentBuilder::new()
                .schema(Some(openapi::Ref::from_schema_name("ApiError")))
                .build(),
        )
        .build()
        .into()
}

static DOCUMENT: LazyLock<openapi::OpenApi> = LazyLock::new(openapi);

/// The OpenAPI document of this API
///
/// No token needed. The same document is checked in at `docs/openapi.json`.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "health",
    operation_id = "openapi",
    responses((status = 200, description = "This document (OpenAPI 3.1)", body = Object, content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Response {
    Json(&*DOCUMENT).into_response()
}

// ---- Shapes that handlers build as JSON values, or that other crates own ----

/// One of several problems of a request (`details` of an error).
#[derive(ToSchema)]
pub(crate) struct ErrorDetail {
    /// Stable, machine-readable code.
    code: String,
    /// JSON pointer into the request body.
    pointer: String,
    /// What is wrong, for a person.
    message: String,
}

/// The repository of a workspace.
#[derive(serde::Serialize, ToSchema)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub(crate) enum Repository {
    /// A git working tree on the server's file system.
    Local {
        /// Absolute path of a local git working tree.
        path: String,
        /// Branch that proposals are committed against; the current HEAD when absent.
        default_branch: Option<String>,
    },
    /// A repository on GitHub.
    Github {
        /// GitHub user or organisation.
        owner: String,
        /// Repository name.
        repo: String,
        /// Base branch for pull requests; the repository's default branch when absent.
        default_branch: Option<String>,
    },
}

/// A new workspace: the data of `workspace.created.v1` (`GET /v1/schemas/workspace.created.v1`
/// is the exact schema, which the server checks).
#[derive(ToSchema)]
#[schema(example = json!({"id": "payments", "name": "Payments service",
    "repository": {"kind": "github", "owner": "acme", "repo": "payments", "default_branch": "main"}}))]
pub(crate) struct NewWorkspace {
    /// 1–63 characters of `a-z`, `0-9`, `-`, starting with a letter or digit; `system` is reserved.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    id: String,
    /// Human-readable name.
    name: String,
    repository: Repository,
}

/// A workspace: the data of its `workspace.created.v1`, with when and where it was recorded.
#[derive(ToSchema)]
pub(crate) struct WorkspaceView {
    /// The workspace id.
    id: String,
    /// Human-readable name.
    name: String,
    repository: Repository,
    /// When it was created.
    created_at: DateTime<Utc>,
    /// The global sequence of its `workspace.created.v1`.
    sequence: i64,
    /// Its current settings (`GET` only): `{"github_approvers": []}` until set.
    #[schema(value_type = Option<WorkspaceSettings>)]
    settings: Option<Value>,
}

/// A workspace's settings: the data of `workspace.configured.v1` (its schema is exact).
#[derive(ToSchema)]
#[schema(example = json!({"github_approvers": ["octocat"], "artifacts": [{"name": "milestones.md", "max_age": "12h"}]}))]
pub(crate) struct WorkspaceSettings {
    /// GitHub logins whose `/switchyard` commands are obeyed.
    github_approvers: Vec<String>,
    /// Overrides of the server's artifact contracts, per artifact `name` (and any of `path`,
    /// `producer`, `consumers`, `rules`, `max_age`).
    #[schema(value_type = Option<Vec<Object>>)]
    artifacts: Option<Vec<Value>>,
}

/// A CloudEvent (structured mode, JSON), with Switchyard's extensions.
#[derive(ToSchema)]
#[schema(example = json!({"specversion": "1.0", "id": "0190a3c4-…", "source": "/api",
    "type": "task.requested.v1", "subject": "task/42", "time": "2025-01-01T12:00:00Z",
    "datacontenttype": "application/json", "data": {"task_id": "42"}}))]
#[derive(serde::Serialize)]
pub(crate) struct CloudEvent {
    /// Always `1.0`.
    specversion: String,
    /// The event's id (unique per source).
    id: String,
    /// Who produced it (a URI reference).
    source: String,
    /// `<noun>.<past-tense verb>.v<N>`, one of the catalog (`GET /v1/schemas`).
    #[serde(rename = "type")]
    ty: String,
    /// The stream it belongs to.
    subject: Option<String>,
    time: Option<DateTime<Utc>>,
    datacontenttype: Option<String>,
    /// `urn:switchyard:event:<type>` when read back.
    dataschema: Option<String>,
    /// The payload; it must match the schema of `type`.
    #[schema(value_type = Option<Object>)]
    data: Option<Value>,
    /// When posting: the version the stream must be at (0: it must not exist yet).
    expectedversion: Option<i64>,
    /// Read back: the workspace.
    workspace: Option<String>,
    /// Read back: the global sequence (server-owned).
    sequence: Option<i64>,
    /// Read back: the version in its stream (server-owned).
    streamversion: Option<i64>,
    /// Read back: the correlation the event belongs to.
    correlationid: Option<String>,
    /// The event that caused this one.
    causationid: Option<String>,
    /// W3C trace context.
    traceparent: Option<String>,
}

/// What a proposer submits.
#[derive(ToSchema)]
pub(crate) struct ProposalDraft {
    /// One line.
    title: String,
    /// What and why.
    description: String,
    /// The file changes.
    changes: Vec<ProposalChange>,
    /// The author's reasoning or evidence.
    rationale: Option<String>,
    /// The author's confidence, 0..1.
    #[schema(minimum = 0.0, maximum = 1.0)]
    confidence: Option<f64>,
    /// The finding it addresses, if any.
    finding: Option<ProposalFinding>,
}

/// One file's change.
#[derive(ToSchema)]
pub(crate) struct ProposalChange {
    /// Path relative to the repository root.
    path: String,
    /// What happens to it.
    action: ChangeAction,
    /// The full new content (create, modify).
    content: Option<String>,
}

/// What a change does to one file.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ChangeAction {
    Create,
    Modify,
    Delete,
}

/// Where a finding-driven proposal came from.
#[derive(ToSchema)]
pub(crate) struct ProposalFinding {
    /// Stable across runs.
    fingerprint: String,
    /// Kind of finding.
    kind: String,
}

/// Where a proposal stands.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ProposalStatus {
    Pending,
    Approved,
    Rejected,
    Committed,
    Failed,
    Merged,
    Closed,
}

/// A proposal, folded from its stream `proposal/<id>`, with its history.
#[derive(ToSchema)]
pub(crate) struct ProposalView {
    /// Its id.
    id: String,
    status: ProposalStatus,
    /// What was proposed: the data of `proposal.created.v1` (`GET /v1/schemas/proposal.created.v1`).
    #[schema(value_type = Object)]
    proposal: Value,
    /// SHA-256 of what would be committed; an approval may name it.
    content_hash: String,
    /// When it was proposed.
    created_at: DateTime<Utc>,
    /// The stream's last version.
    version: u64,
    /// The id of its `proposal.created.v1`.
    created_event_id: String,
    /// The correlation its events share.
    correlation_id: String,
    /// Every event of its stream, oldest first.
    #[schema(value_type = Vec<Object>)]
    history: Vec<Value>,
}

/// A plan: a task graph (the `plan` of `plan.submitted.v1`, whose schema is exact).
#[derive(ToSchema)]
pub(crate) struct PlanSpec {
    /// The plan's id; the server makes one (a UUIDv7) when it is absent.
    id: Option<String>,
    /// One line.
    title: String,
    /// What the plan is for.
    description: Option<String>,
    /// The tasks: each with `id`, `title`, `role`, and optionally `description`,
    /// `depends_on`, `inputs`, `acceptance`, `max_attempts`, `timeout_secs`, `review`.
    #[schema(value_type = Vec<Object>)]
    tasks: Vec<Value>,
    /// Dispatch limits.
    #[schema(value_type = Option<Object>)]
    concurrency: Option<Value>,
    /// Where each cause of failure goes: a role, `retry` or `escalate`.
    #[schema(value_type = Option<std::collections::BTreeMap<String, String>>)]
    failure_routing: Option<Value>,
    /// How deep branch tasks may nest before a failure is escalated.
    max_branch_depth: Option<u32>,
}

/// A plan as folded from its stream, never behind: every task's state.
#[derive(ToSchema)]
pub(crate) struct PlanView {
    id: String,
    title: String,
    description: Option<String>,
    /// `running`, `succeeded`, `aborted` or `cancelled`.
    status: String,
    submitted_by: String,
    submitted_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
    finished_at: Option<DateTime<Utc>>,
    /// The cancellation, once asked for.
    #[schema(value_type = Option<Object>)]
    cancel: Option<Value>,
    #[schema(value_type = Object)]
    concurrency: Value,
    max_branch_depth: u32,
    /// The stream's last version.
    version: u64,
    correlation_id: String,
    /// Each task: `id`, `title`, `role`, `status`, `depends_on`, `attempts`, `failures`,
    /// `last_failure`, `escalation`, `commit`, `review`…
    #[schema(value_type = Vec<Object>)]
    tasks: Vec<Value>,
}

/// One version of an artifact, without its content.
#[derive(ToSchema)]
pub(crate) struct ArtifactVersion {
    /// 1 for the first.
    version: i64,
    /// SHA-256 of the content.
    content_hash: String,
    /// Who produced it.
    producer: String,
    /// The `artifact.updated.v1` event.
    event_id: String,
    /// When.
    produced_at: DateTime<Utc>,
    /// Its size.
    size_bytes: Option<i64>,
}

/// Where one consumer stands with an artifact.
#[derive(ToSchema)]
pub(crate) struct ArtifactReader {
    /// The consumer.
    consumer: String,
    /// The last version it read, if any.
    version: Option<i64>,
    /// When it read it.
    read_at: Option<DateTime<Utc>>,
    /// The `artifact.consumed.v1` event.
    event_id: Option<String>,
}

/// An artifact: its contract, latest version, readers and staleness.
#[derive(ToSchema)]
pub(crate) struct ArtifactSummary {
    /// Its name.
    name: String,
    /// Where it belongs in the repository.
    path: String,
    /// Its declared producer (empty for an artifact no contract declares any more).
    producer: String,
    /// The latest version.
    latest: Option<ArtifactVersion>,
    /// From the contract.
    max_age: Option<String>,
    /// Seconds since the latest version.
    age_secs: Option<i64>,
    /// Each declared consumer (and any other reader).
    readers: Vec<ArtifactReader>,
    /// Whether it is stale: too old, never produced, or a consumer is behind.
    stale: bool,
    /// Why, one line per reason.
    stale_reasons: Vec<String>,
    /// Rules handed to its consumers.
    rules: Vec<String>,
}

/// An action item of a retrospective.
#[derive(ToSchema)]
pub(crate) struct ActionItem {
    id: String,
    /// The agent it is assigned to.
    agent: Option<String>,
    text: String,
    /// What the agent is asked to do, when it is machine-readable.
    action: Option<Value>,
    /// `assigned` or `completed`.
    status: String,
    completed_at: Option<DateTime<Utc>>,
    /// What came of it.
    outcome: Option<String>,
}

/// A retrospective, with its action items and where they stand.
#[derive(ToSchema)]
pub(crate) struct Retrospective {
    retrospective_id: String,
    /// `scheduled`, `manual`, …
    reason: Option<String>,
    window_from: Option<DateTime<Utc>>,
    window_to: Option<DateTime<Utc>>,
    completed_at: DateTime<Utc>,
    /// The `retrospective.completed.v1` event.
    event_id: String,
    /// What the retrospective found (its `insights`).
    insights: Value,
    /// Why proposals were rejected in the period.
    rejection_reasons: Option<Value>,
    action_items: Vec<ActionItem>,
}

/// One agent's metrics over one retrospective's period.
#[derive(ToSchema)]
pub(crate) struct AgentMetrics {
    retrospective_id: String,
    agent: String,
    window_from: Option<DateTime<Utc>>,
    window_to: Option<DateTime<Utc>>,
    /// Each metric by name.
    #[schema(value_type = std::collections::BTreeMap<String, f64>)]
    metrics: Value,
}

/// How much the server tells.
#[derive(serde::Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Mode {
    /// The default: spans and metrics, logs at the configured filter.
    Shipping,
    /// Verbose logs and full telemetry.
    Debug,
}

/// Where the observability mode stands.
#[derive(ToSchema)]
pub(crate) struct ModeState {
    mode: Mode,
    /// When it goes back to `shipping` by itself (a debug window).
    until: Option<DateTime<Utc>>,
    /// Why it is what it is.
    reason: String,
}

/// Where the store, the relay, the consumers and the projections stand.
#[derive(ToSchema)]
pub(crate) struct OpsStatus {
    /// `head_sequence` and `events`.
    #[schema(value_type = Object)]
    store: Value,
    /// `active_here` (whether this instance runs the active relay) and `status`.
    #[schema(value_type = Object)]
    relay: Value,
    /// Each agent's consumer per event type: pending, ack pending, redelivered.
    #[schema(value_type = Vec<Object>)]
    consumers: Vec<Value>,
    /// Each projection's checkpoint and lag.
    #[schema(value_type = Vec<Object>)]
    projections: Vec<Value>,
    /// Lags are counted up to this many events.
    lag_cap: i64,
}

/// The unresolved dead letters.
#[derive(ToSchema)]
pub(crate) struct DeadLetters {
    /// Each with its id, agent, workspace, event and failure.
    #[schema(value_type = Vec<Object>)]
    dead_letters: Vec<Value>,
}

/// The relay after a pause or a resume.
#[derive(ToSchema)]
pub(crate) struct RelayPaused {
    paused: bool,
    /// The relay's status: position, lag, `paused_by`.
    #[schema(value_type = Object)]
    relay: Value,
}
