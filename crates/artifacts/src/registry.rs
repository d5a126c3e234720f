//! The artifact registry: a projection (schema `proj_artifacts`) of every artifact version
//! and of who read which, and the queries behind the artifacts API, which add staleness from
//! the contracts.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use switchyard_events::RecordedEvent;
use switchyard_projections::Projection;

use crate::Contracts;

/// The projection.
#[derive(Debug, Clone, Copy, Default)]
pub struct ArtifactsProjection;

const SCHEMA: &str = "
CREATE TABLE versions (
    workspace     text NOT NULL,
    name          text NOT NULL,
    version       bigint NOT NULL,
    path          text NOT NULL,
    content_hash  text NOT NULL,
    producer      text NOT NULL,
    event_id      text NOT NULL,
    position      bigint NOT NULL,
    produced_at   timestamptz NOT NULL,
    size_bytes    bigint,
    content       text,
    PRIMARY KEY (workspace, name, version)
);
CREATE TABLE reads (
    workspace     text NOT NULL,
    name          text NOT NULL,
    consumer      text NOT NULL,
    version       bigint NOT NULL,
    content_hash  text NOT NULL,
    event_id      text NOT NULL,
    read_at       timestamptz NOT NULL,
    PRIMARY KEY (workspace, name, consumer, version)
);
";

fn text(data: &Value, key: &str) -> String {
    data.get(key)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

impl Projection for ArtifactsProjection {
    fn name(&self) -> &'static str {
        "artifacts"
    }

    fn schema(&self) -> &'static str {
        SCHEMA
    }

    fn types(&self) -> Option<&'static [&'static str]> {
        Some(&["artifact.updated.v1", "artifact.consumed.v1"])
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let data = &event.data;
            let ws = event.workspace.as_str();
            match event.ty.as_str() {
                "artifact.updated.v1" => {
                    sqlx::query(
                        "INSERT INTO versions (workspace, name, version, path, content_hash, producer,
                                               event_id, position, produced_at, size_bytes, content)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(ws)
                    .bind(text(data, "name"))
                    .bind(data["version"].as_i64().unwrap_or_default())
                    .bind(text(data, "path"))
                    .bind(text(data, "content_hash"))
                    .bind(text(data, "producer"))
                    .bind(event.id.as_str())
                    .bind(event.position)
                    .bind(event.time)
                    .bind(data["size_bytes"].as_i64())
                    .bind(data["content"].as_str())
                    .execute(&mut *tx)
                    .await?;
                }
                "artifact.consumed.v1" => {
                    sqlx::query(
                        "INSERT INTO reads (workspace, name, consumer, version, content_hash, event_id, read_at)
                         VALUES ($1, $2, $3, $4, $5, $6, $7)
                         ON CONFLICT DO NOTHING",
                    )
                    .bind(ws)
                    .bind(text(data, "name"))
                    .bind(text(data, "consumer"))
                    .bind(data["version"].as_i64().unwrap_or_default())
                    .bind(text(data, "content_hash"))
                    .bind(event.id.as_str())
                    .bind(event.time)
                    .execute(&mut *tx)
                    .await?;
                }
                _ => {}
            }
            Ok(())
        })
    }
}

/// One version, without its content.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct VersionRow {
    /// 1 for the first.
    pub version: i64,
    /// SHA-256 of the content.
    pub content_hash: String,
    /// Who produced it.
    pub producer: String,
    /// The `artifact.updated.v1` event.
    pub event_id: String,
    /// When.
    pub produced_at: DateTime<Utc>,
    /// Its size.
    pub size_bytes: Option<i64>,
}

/// Where one consumer stands with an artifact.
#[derive(Debug, Clone, Serialize)]
pub struct Reader {
    /// The consumer.
    pub consumer: String,
    /// The last version it read, if any.
    pub version: Option<i64>,
    /// When it read it.
    pub read_at: Option<DateTime<Utc>>,
    /// The `artifact.consumed.v1` event.
    pub event_id: Option<String>,
    /// Whether a newer version exists than the one it read (or it read none).
    pub behind: bool,
}

/// An artifact as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Its name.
    pub name: String,
    /// Where it belongs in the repository.
    pub path: String,
    /// Its declared producer (empty for an artifact no contract declares any more).
    pub producer: String,
    /// The latest version.
    pub latest: Option<VersionRow>,
    /// From the contract.
    pub max_age: Option<String>,
    /// Seconds since the latest version.
    pub age_secs: Option<i64>,
    /// Each declared consumer (and any other reader).
    pub readers: Vec<Reader>,
    /// Whether it is stale: too old, never produced, or a consumer is behind.
    pub stale: bool,
    /// Why, one line per reason.
    pub stale_reasons: Vec<String>,
    /// Rules handed to its consumers.
    pub rules: Vec<String>,
}

/// Every artifact of a workspace: the declared ones and any other that has versions.
pub async fn list(
    pool: &PgPool,
    workspace: &str,
    contracts: &Contracts,
    now: DateTime<Utc>,
) -> Result<Vec<Summary>, sqlx::Error> {
    /// name, path, version, hash, producer, event id, produced at, size
    type Latest = (
        String,
        String,
        i64,
        String,
        String,
        String,
        DateTime<Utc>,
        Option<i64>,
    );
    let latest: Vec<Latest> = sqlx::query_as(
        "SELECT DISTINCT ON (name) name, path, version, content_hash, producer, event_id,
                    produced_at, size_bytes
             FROM proj_artifacts.versions WHERE workspace = $1
             ORDER BY name, version DESC",
    )
    .bind(workspace)
    .fetch_all(pool)
    .await?;
    let reads: Vec<(String, String, i64, DateTime<Utc>, String)> = sqlx::query_as(
        "SELECT DISTINCT ON (name, consumer) name, consumer, version, read_at, event_id
         FROM proj_artifacts.reads WHERE workspace = $1
         ORDER BY name, consumer, version DESC",
    )
    .bind(workspace)
    .fetch_all(pool)
    .await?;
    let mut by_name: BTreeMap<String, Summary> = BTreeMap::new();
    for c in contracts.all() {
        by_name.insert(
            c.name.clone(),
            Summary {
                name: c.name.clone(),
                path: c.path.clone(),
                producer: c.producer.clone(),
                latest: None,
                max_age: c.max_age.clone(),
                age_secs: None,
                readers: c
                    .consumers
                    .iter()
                    .filter(|r| r.as_str() != crate::PEOPLE)
                    .map(|consumer| Reader {
                        consumer: consumer.clone(),
                        version: None,
                        read_at: None,
                        event_id: None,
                        behind: true,
                    })
                    .collect(),
                stale: false,
                stale_reasons: Vec::new(),
                rules: c.rules.clone(),
            },
        );
    }
    for (name, path, version, content_hash, producer, event_id, produced_at, size_bytes) in latest {
        let summary = by_name.entry(name.clone()).or_insert_with(|| Summary {
            name,
            path: path.clone(),
            producer: String::new(),
            latest: None,
            max_age: None,
            age_secs: None,
            readers: Vec::new(),
            stale: false,
            stale_reasons: Vec::new(),
            rules: Vec::new(),
        });
        summary.age_secs = Some((now - produced_at).num_seconds().max(0));
        summary.latest = Some(VersionRow {
            version,
            content_hash,
            producer,
            event_id,
            produced_at,
            size_bytes,
        });
    }
    for (name, consumer, version, read_at, event_id) in reads {
        let Some(summary) = by_name.get_mut(&name) else {
            continue;
        };
        let reader = match summary.readers.iter_mut().find(|r| r.consumer == consumer) {
            Some(r) => r,
            None => {
                summary.readers.push(Reader {
                    consumer,
                    version: None,
                    read_at: None,
                    event_id: None,
                    behind: true,
                });
                let Some(last) = summary.readers.last_mut() else {
                    continue;
                };
                last
            }
        };
        reader.version = Some(version);
        reader.read_at = Some(read_at);
        reader.event_id = Some(event_id);
    }
    for summary in by_name.values_mut() {
        let latest = summary.latest.as_ref().map(|l| l.version);
        match (latest, summary.age_secs) {
            (None, _) => summary
                .stale_reasons
                .push("no version has been produced yet".into()),
            (Some(_), Some(age)) => {
                let limit = summary
                    .max_age
                    .as_deref()
                    .and_then(|a| humantime::parse_duration(a).ok());
                if let Some(limit) = limit
                    && u64::try_from(age).unwrap_or_default() > limit.as_secs()
                {
                    summary.stale_reasons.push(format!(
                        "the latest version is {age} s old, more than max_age {}",
                        summary.max_age.as_deref().unwrap_or_default()
                    ));
                }
            }
            (Some(_), None) => {}
        }
        for reader in &mut summary.readers {
            reader.behind = match (reader.version, latest) {
                (_, None) => false,
                (None, Some(_)) => true,
                (Some(read), Some(latest)) => read < latest,
            };
            if reader.behind {
                summary.stale_reasons.push(match reader.version {
                    Some(v) => format!(
                        "{} read version {v}; the latest is {}",
                        reader.consumer,
                        latest.unwrap_or_default()
                    ),
                    None => format!("{} has not read it", reader.consumer),
                });
            }
        }
        summary.stale = !summary.stale_reasons.is_empty();
    }
    Ok(by_name.into_values().collect())
}

/// Every version of one artifact, newest first.
pub async fn versions(
    pool: &PgPool,
    workspace: &str,
    name: &str,
) -> Result<Vec<VersionRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, content_hash, producer, event_id, produced_at, size_bytes
         FROM proj_artifacts.versions WHERE workspace = $1 AND name = $2
         ORDER BY version DESC LIMIT 1000",
    )
    .bind(workspace)
    .bind(name)
    .fetch_all(pool)
    .await
}

/// Every read of one artifact: (consumer, version, read at, event id), newest first.
pub async fn reads(
    pool: &PgPool,
    workspace: &str,
    name: &str,
) -> Result<Vec<(String, i64, DateTime<Utc>, String)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT consumer, version, read_at, event_id FROM proj_artifacts.reads
         WHERE workspace = $1 AND name = $2 ORDER BY read_at DESC, consumer LIMIT 1000",
    )
    .bind(workspace)
    .bind(name)
    .fetch_all(pool)
    .await
}

/// The content of one version (the latest when `version` is `None`): (version, hash,
/// content).
pub async fn content(
    pool: &PgPool,
    workspace: &str,
    name: &str,
    version: Option<i64>,
) -> Result<Option<(i64, String, Option<String>)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, content_hash, content FROM proj_artifacts.versions
         WHERE workspace = $1 AND name = $2 AND ($3::bigint IS NULL OR version = $3)
         ORDER BY version DESC LIMIT 1",
    )
    .bind(workspace)
    .bind(name)
    .bind(version)
    .fetch_optional(pool)
    .await
}
