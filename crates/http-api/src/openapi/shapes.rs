//! Shapes that handlers build as JSON values (a fold, a projection row as `jsonb`), or that
//! other crates own and serialize (which do not depend on utoipa). They are described here and
//! never built: the tests in `tests/api/openapi.rs` validate real answers against them, and
//! the examples of the event schemas against the request bodies, so a shape that drifts fails
//! there.
#![allow(dead_code)] // described, never built

use chrono::{DateTime, Utc};
use serde_json::Value;
use utoipa::ToSchema;

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
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(crate) enum Repository {
    /// A git working tree on the server's file system.
    Local {
        /// Absolute path of a local git working tree.
        #[schema(pattern = "^/", min_length = 1, max_length = 4096)]
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
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"id": "payments", "name": "Payments service",
    "repository": {"kind": "github", "owner": "acme", "repo": "payments", "default_branch": "main"}}))]
pub(crate) struct NewWorkspace {
    /// 1–63 characters of `a-z`, `0-9`, `-`, starting with a letter or digit; `system` is reserved.
    #[schema(pattern = "^[a-z0-9][a-z0-9-]{0,62}$")]
    id: String,
    /// Human-readable name.
    #[schema(min_length = 1, max_length = 200)]
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
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
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

/// What a proposer submits. Server-owned fields (`id`, `status`, `content_hash`, `author`…)
/// are refused.
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
#[derive(serde::Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
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
    /// How old the consumers' figures are, in milliseconds: nats-server computes them when
    /// asked, so they are reused for up to 2 s.
    consumers_age_ms: u64,
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
