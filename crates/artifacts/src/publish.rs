//! Writing and reading artifact versions from inside an agent's handler.

use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use switchyard_agent_runtime::{Context, HandlerError};
use switchyard_events::{EventType, ExpectedVersion, NewEvent, Source, StreamId};

use crate::{Contracts, Override};

/// The stream of an artifact's versions.
pub fn stream(name: &str) -> String {
    format!("artifact/{name}")
}

/// One version of an artifact, as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// 1 for the first.
    pub version: i64,
    /// SHA-256 of the content, hex.
    pub content_hash: String,
    /// The content.
    pub content: String,
    /// The `artifact.updated.v1` event's id.
    pub event_id: String,
}

fn sha256(content: &str) -> String {
    Sha256::digest(content.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The latest version of an artifact in a workspace, read from the store (never lags).
pub async fn latest(
    conn: &mut PgConnection,
    workspace: &str,
    name: &str,
) -> Result<Option<Version>, sqlx::Error> {
    let row: Option<(i64, Value, String)> = sqlx::query_as(
        "SELECT stream_version, data, id FROM events
         WHERE workspace = $1 AND stream_id = $2 AND type = 'artifact.updated.v1'
         ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(workspace)
    .bind(stream(name))
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(version, data, event_id)| Version {
        version,
        content_hash: data["content_hash"].as_str().unwrap_or_default().to_owned(),
        content: data["content"].as_str().unwrap_or_default().to_owned(),
        event_id,
    }))
}

/// The contracts that hold in a workspace: `base` with the overrides of its latest settings.
pub async fn contracts_for(
    conn: &mut PgConnection,
    base: &Contracts,
    workspace: &str,
) -> Result<Contracts, sqlx::Error> {
    // NULL when the latest settings have no `artifacts`.
    let overrides: Option<Option<Value>> = sqlx::query_scalar(
        "SELECT data->'artifacts' FROM events
         WHERE workspace = $1 AND stream_id = 'workspace' AND type = 'workspace.configured.v1'
         ORDER BY stream_version DESC LIMIT 1",
    )
    .bind(workspace)
    .fetch_optional(conn)
    .await?;
    let overrides: Vec<Override> = overrides
        .flatten()
        .and_then(|v| serde_json::from_value(v).ok())
        .unwrap_or_default();
    Ok(base.with_overrides(&overrides))
}

fn invalid(e: impl std::fmt::Display) -> HandlerError {
    HandlerError::new(e.to_string())
}

/// Publishes `content` as the next version of artifact `name`, produced by the handling
/// agent: an `artifact.updated.v1` on `artifact/<name>`, appended only if the stream is still
/// at the version read (a concurrent publish makes this handler retry). Content equal to the
/// latest version's publishes nothing. Returns the new version number. Publishers of one
/// artifact in one workspace are serialised by a transaction-scoped advisory lock.
///
/// The contract must name this agent as the producer, and its manifest must declare it.
pub async fn publish(
    ctx: &mut Context<'_>,
    contracts: &Contracts,
    name: &str,
    content: String,
) -> Result<Option<i64>, HandlerError> {
    let agent = ctx.manifest().name.clone();
    let Some(contract) = contracts.get(name) else {
        return Err(HandlerError::new(format!(
            "agent {agent} publishes artifact {name}, which no contract declares"
        )));
    };
    if contract.producer != agent || !ctx.manifest().produces.iter().any(|p| p == name) {
        return Err(HandlerError::new(format!(
            "agent {agent} may not publish artifact {name}: its contract names producer {}",
            contract.producer
        )));
    }
    let path = contract.path.clone();
    let workspace = ctx.cause().workspace.clone();
    // Concurrent handlers publishing the same artifact take turns (until the first commits),
    // so the second reads the first's version instead of failing on it.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("switchyard.artifact.{workspace}.{name}"))
        .execute(ctx.connection())
        .await?;
    let current = latest(ctx.connection(), workspace.as_str(), name).await?;
    let hash = sha256(&content);
    if current.as_ref().is_some_and(|c| c.content_hash == hash) {
        return Ok(None);
    }
    let version = current.as_ref().map_or(1, |c| c.version + 1);
    let mut event = NewEvent::new(
        workspace,
        Source::parse(&format!("/agents/{agent}")).map_err(invalid)?,
        EventType::parse("artifact.updated.v1").map_err(invalid)?,
        StreamId::parse(&stream(name)).map_err(invalid)?,
        json!({
            "name": name, "path": path, "content_hash": hash, "producer": agent,
            "version": version, "size_bytes": content.len(), "content": content,
        }),
    );
    event.expected_version = match &current {
        Some(c) => ExpectedVersion::Exactly(u64::try_from(c.version).unwrap_or_default()),
        None => ExpectedVersion::NoStream,
    };
    ctx.emit_event(event)?;
    Ok(Some(version))
}

/// Records that the handling agent read `version` of artifact `name`
/// (`artifact.consumed.v1`, stream `artifact/<name>/readers/<agent>`).
pub fn consume(ctx: &mut Context<'_>, name: &str, version: &Version) -> Result<(), HandlerError> {
    let agent = ctx.manifest().name.clone();
    ctx.emit(
        "artifact.consumed.v1",
        &format!("{}/readers/{agent}", stream(name)),
        json!({
            "name": name, "version": version.version, "content_hash": version.content_hash,
            "consumer": agent, "artifact_event_id": version.event_id,
        }),
    )
}
