//! `POST /v1/github/webhook`: GitHub deliveries in, `github.*.v1` events out.
//!
//! Order matters: the signature is checked on the raw bytes before anything is parsed; the
//! delivery id is recorded in the same transaction as the events it produced, and the answer
//! is sent after that commit. So a delivery that failed before commit leaves no trace and is
//! processed when GitHub redelivers it, and one that succeeded is acknowledged again and
//! appends nothing, however many copies arrive at once.
//!
//! Also the catch-up: ask GitHub for the recent deliveries of the hooks that point here and
//! redeliver those that never reached us.

use std::collections::HashSet;

use axum::{
    Extension, Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::{EventId, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_github::{
    GitHubHost,
    webhook::{Mapped, RepoName, SignatureError, map, verify_signature},
};
use switchyard_store::Error as StoreError;

use crate::{ApiError, AppState, Principal, Scope};

/// The route's path; also how the catch-up recognises our hooks on GitHub.
pub const WEBHOOK_PATH: &str = "/v1/github/webhook";

/// GitHub caps payloads at 25 MB.
pub const MAX_WEBHOOK_BODY: usize = 25 * 1024 * 1024;

/// Attempts of the recording transaction when it races another writer of the same stream.
const ATTEMPTS: usize = 5;

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `X-GitHub-Event` / `X-GitHub-Delivery`: bounded, and of the characters GitHub uses.
fn checked_header<'h>(
    headers: &'h HeaderMap,
    name: &str,
    max: usize,
    allowed: fn(u8) -> bool,
) -> Result<&'h str, ApiError> {
    let value = header_str(headers, name)
        .ok_or_else(|| ApiError::bad_request(format!("{name} is missing")))?;
    if value.is_empty() || value.len() > max || !value.bytes().all(allowed) {
        return Err(ApiError::bad_request(format!(
            "{name} is not a GitHub {}",
            if name.ends_with("Event") {
                "event name"
            } else {
                "delivery id"
            }
        )));
    }
    Ok(value)
}

/// What the delivery's row says.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookDelivery {
    /// `X-GitHub-Delivery`.
    delivery: String,
    /// `processed` (events appended), `ignored` (see `reason`) or `ping`.
    #[schema(pattern = "^(processed|ignored|ping)$")]
    outcome: &'static str,
    /// Why it was ignored.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// The workspaces bound to the repository, which got the events.
    workspaces: Vec<String>,
    /// The global sequences of the events appended.
    sequences: Vec<i64>,
}

/// The answer to a delivery.
// Fields in alphabetical order: the bytes `json!` wrote before.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WebhookAnswer {
    /// What was recorded for it (the first time, for a redelivery).
    #[serde(serialize_with = "crate::sorted_keys")]
    delivery: WebhookDelivery,
    /// Whether this delivery id was seen before (then nothing was appended).
    duplicate: bool,
}

/// Receives a GitHub webhook delivery
///
/// No token: the `X-Hub-Signature-256` signature (HMAC-SHA256 of the body with the webhook
/// secret) authenticates it. Mapped to `github.*.v1` events in every workspace bound to the
/// repository; the delivery id is recorded in the same transaction, so a redelivery appends
/// nothing. 200 for a ping or a redelivery, 202 for a new delivery.
#[utoipa::path(
    post,
    path = "/v1/github/webhook",
    tag = "github",
    operation_id = "github_webhook",
    params(
        ("X-Hub-Signature-256" = String, Header, description = "`sha256=` and the HMAC-SHA256 of the body, in hex"),
        ("X-GitHub-Event" = String, Header, description = "The event name, e.g. `pull_request`"),
        ("X-GitHub-Delivery" = String, Header, description = "The delivery's id"),
    ),
    request_body(content = Object, content_type = "application/json", description = "GitHub's payload, up to 25 MB"),
    responses(
        (status = 200, description = "A ping, or a redelivery of a recorded delivery", body = WebhookAnswer),
        (status = 202, description = "Recorded", body = WebhookAnswer),
        (status = 400, description = "A missing or malformed event or delivery header, or a body that is not JSON", body = ApiError),
        (status = 401, description = "The signature is missing, malformed or wrong", body = ApiError),
        (status = 404, description = "Webhooks are off: no secret configured (`webhooks_disabled`)", body = ApiError),
        (status = 413, description = "The body is larger than 25 MB", body = ApiError),
        (status = 503, description = "The store is unavailable (`Retry-After`); GitHub shows the delivery failed", body = ApiError),
    )
)]
#[tracing::instrument(name = "github.webhook", skip_all, fields(github.event, github.delivery))]
pub(crate) async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let Some(secret) = state.webhook_secret.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "webhooks_disabled",
            "GitHub webhooks are off: set SWITCHYARD_GITHUB_WEBHOOK_SECRET",
        ));
    };
    let body = body?;
    let signature = headers.get("x-hub-signature-256").map(|v| v.as_bytes());
    if let Err(e) = verify_signature(secret.as_bytes(), &body, signature) {
        let code = match e {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
        };
        tracing::warn!(%e, "webhook refused");
        switchyard_telemetry::metrics().webhook("refused");
        return Err(ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string()));
    }
    // Authentic from here on; still bounded, still parsed defensively.
    let event = checked_header(&headers, "X-GitHub-Event", 64, |b| {
        b.is_ascii_lowercase() || b == b'_'
    })?;
    let delivery = checked_header(&headers, "X-GitHub-Delivery", 100, |b| {
        b.is_ascii_alphanumeric() || b == b'-'
    })?;
    tracing::Span::current().record("github.event", event);
    tracing::Span::current().record("github.delivery", delivery);
    let payload: Value = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            format!("the payload is not valid JSON: {e}"),
        )
    })?;
    let mapped = map(event, delivery, &payload);
    drop(payload);

    let mut attempt = 0;
    let recorded = loop {
        attempt += 1;
        match record(&state, event, delivery, &mapped).await {
            Err(StoreError::ConcurrentWrite) if attempt < ATTEMPTS => continue,
            Err(e) => {
                tracing::error!(delivery, error = %e, "webhook delivery not recorded; GitHub will show it failed");
                switchyard_telemetry::metrics().webhook("failed");
                return Err(ApiError::from_store(e, false));
            }
            Ok(recorded) => break recorded,
        }
    };
    let (status, body) = match recorded {
        Record::Duplicate(original) => {
            tracing::info!(
                delivery,
                outcome = original.outcome,
                "redelivery acknowledged"
            );
            switchyard_telemetry::metrics().webhook("duplicate");
            (
                StatusCode::OK,
                WebhookAnswer {
                    delivery: original,
                    duplicate: true,
                },
            )
        }
        Record::New(recorded) => {
            tracing::info!(delivery, event, outcome = recorded.outcome, reason = ?recorded.reason, "webhook delivery recorded");
            switchyard_telemetry::metrics().webhook(recorded.outcome);
            let status = if recorded.outcome == "ping" {
                StatusCode::OK
            } else {
                StatusCode::ACCEPTED
            };
            (
                status,
                WebhookAnswer {
                    delivery: recorded,
                    duplicate: false,
                },
            )
        }
    };
    Ok((status, Json(body)).into_response())
}

enum Record {
    New(WebhookDelivery),
    Duplicate(WebhookDelivery),
}

/// The workspaces bound to a GitHub repository.
async fn workspaces_of(
    conn: &mut PgConnection,
    repository: &RepoName,
) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT workspace FROM events
         WHERE type = 'workspace.created.v1' AND data #>> '{repository,kind}' = 'github'
           AND lower(data #>> '{repository,owner}') = lower($1)
           AND lower(data #>> '{repository,repo}') = lower($2)
         ORDER BY workspace",
    )
    .bind(&repository.owner)
    .bind(&repository.repo)
    .fetch_all(conn)
    .await
}

/// One transaction: claim the delivery id, append its events, commit.
async fn record(
    state: &AppState,
    event: &str,
    delivery: &str,
    mapped: &Mapped,
) -> Result<Record, StoreError> {
    let mut tx = state.store.pool().begin().await?;
    let repository = match mapped {
        Mapped::Event { repository, .. } => Some(repository.to_string()),
        Mapped::Ignored { repository, .. } => repository.as_ref().map(ToString::to_string),
        Mapped::Ping => None,
    };
    let action = match mapped {
        Mapped::Event { data, .. } => data["action"].as_str().map(str::to_owned),
        _ => None,
    };
    // A second copy waits here on the first one's row until it commits or rolls back.
    let (inserted, outcome, reason, workspaces, positions): (
        bool,
        String,
        Option<String>,
        Vec<String>,
        Vec<i64>,
    ) = sqlx::query_as(
        "INSERT INTO github_deliveries (delivery_id, event, action, repository, outcome)
         VALUES ($1, $2, $3, $4, 'ignored')
         ON CONFLICT (delivery_id) DO UPDATE
            SET redeliveries = github_deliveries.redeliveries + 1, last_seen_at = now()
         RETURNING (xmax = 0), outcome, reason, workspaces, positions",
    )
    .bind(delivery)
    .bind(event)
    .bind(&action)
    .bind(&repository)
    .fetch_one(&mut *tx)
    .await?;
    if !inserted {
        tx.commit().await?;
        return Ok(Record::Duplicate(WebhookDelivery {
            delivery: delivery.to_owned(),
            outcome: match outcome.as_str() {
                "processed" => "processed",
                "ping" => "ping",
                _ => "ignored",
            },
            reason,
            workspaces,
            sequences: positions,
        }));
    }
    let _ = (outcome, reason, workspaces, positions);

    let mut recorded = WebhookDelivery {
        delivery: delivery.to_owned(),
        outcome: "ignored",
        reason: None,
        workspaces: Vec::new(),
        sequences: Vec::new(),
    };
    match mapped {
        Mapped::Ping => recorded.outcome = "ping",
        Mapped::Ignored { reason, .. } => recorded.reason = Some(reason.clone()),
        Mapped::Event {
            repository,
            ty,
            stream,
            data,
        } => {
            let workspaces = workspaces_of(&mut tx, repository).await?;
            if workspaces.is_empty() {
                recorded.reason = Some(format!("no workspace is bound to {repository}"));
            } else {
                let events = workspaces
                    .iter()
                    .map(|ws| build(ws, repository, ty, stream, delivery, data))
                    .collect::<Result<Vec<_>, _>>();
                // Deliveries about one pull request or commit (a CI run's many check runs)
                // arrive together and append to one stream: take turns on it, in workspace
                // order, rather than race for its next version and retry.
                for ws in &workspaces {
                    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
                        .bind(format!("switchyard.stream:{ws}:{stream}"))
                        .execute(&mut *tx)
                        .await?;
                }
                let appended = match events {
                    Ok(events) => state.store.append_in(&mut tx, events).await,
                    Err(e) => Err(StoreError::Corrupt {
                        position: 0,
                        source: e,
                    }),
                };
                match appended {
                    Ok(appended) => {
                        recorded.outcome = "processed";
                        recorded.sequences = appended.iter().map(|a| a.position).collect();
                        recorded.workspaces = workspaces;
                    }
                    // The payload does not fit the schema (GitHub changed, or a field is
                    // missing): recorded as ignored with the reason, never retried forever.
                    Err(StoreError::Invalid { source, .. }) => {
                        recorded.reason = Some(format!("the payload does not fit {ty}: {source}"));
                    }
                    Err(StoreError::Corrupt { source, .. }) => {
                        recorded.reason = Some(format!("the delivery cannot be named: {source}"));
                    }
                    Err(e) => return Err(e),
                }
            }
        }
    }
    sqlx::query(
        "UPDATE github_deliveries SET outcome = $2, reason = $3, workspaces = $4, positions = $5
         WHERE delivery_id = $1",
    )
    .bind(delivery)
    .bind(recorded.outcome)
    .bind(&recorded.reason)
    .bind(&recorded.workspaces)
    .bind(&recorded.sequences)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Record::New(recorded))
}

/// The event of a delivery in one workspace: its id is the delivery id, so the delivery is
/// the root of the causation chain, and a second copy would be a duplicate in the store too.
fn build(
    workspace: &str,
    repository: &RepoName,
    ty: &str,
    stream: &str,
    delivery: &str,
    data: &Value,
) -> Result<NewEvent, switchyard_events::InvalidId> {
    let mut event = NewEvent::new(
        Workspace::parse(workspace)?,
        Source::parse(&format!("/github/{repository}"))?,
        EventType::parse(ty)?,
        StreamId::parse(stream)?,
        data.clone(),
    );
    event.id = EventId::parse(delivery)?;
    Ok(event)
}

/// What a catch-up did.
#[derive(Debug, Default, Serialize, utoipa::ToSchema)]
pub struct CatchUpReport {
    /// Repositories of GitHub workspaces looked at.
    pub repositories: usize,
    /// Hooks that point at this server's webhook route.
    pub hooks: usize,
    /// Delivery attempts listed.
    pub attempts: usize,
    /// Deliveries asked for again.
    pub redelivered: Vec<String>,
    /// What went wrong, per repository or hook; the rest went on.
    pub errors: Vec<String>,
}

/// Asks GitHub for the deliveries of the last `hours` of every hook that points at
/// [`WEBHOOK_PATH`], on the repositories of GitHub workspaces, and redelivers those that
/// this server has no record of and that no attempt delivered.
pub async fn catch_up(
    pool: &sqlx::PgPool,
    github: &GitHubHost,
    hours: i64,
) -> Result<CatchUpReport, sqlx::Error> {
    let repositories: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT (data #>> '{repository,owner}') || '/' || (data #>> '{repository,repo}')
         FROM events
         WHERE type = 'workspace.created.v1' AND data #>> '{repository,kind}' = 'github'",
    )
    .fetch_all(pool)
    .await?;
    let since = (chrono::Utc::now() - chrono::Duration::hours(hours))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    let mut report = CatchUpReport {
        repositories: repositories.len(),
        ..CatchUpReport::default()
    };
    for repository in &repositories {
        let hooks = match github.hooks_to(repository, WEBHOOK_PATH).await {
            Ok(hooks) => hooks,
            Err(e) => {
                report.errors.push(format!("{repository}: {e}"));
                continue;
            }
        };
        report.hooks += hooks.len();
        for hook in hooks {
            let deliveries = match github.deliveries(repository, hook, &since, 10).await {
                Ok(d) => d,
                Err(e) => {
                    report.errors.push(format!("{repository} hook {hook}: {e}"));
                    continue;
                }
            };
            report.attempts += deliveries.len();
            let guids: Vec<String> = deliveries.iter().map(|d| d.guid.clone()).collect();
            let known: HashSet<String> = sqlx::query_scalar(
                "SELECT delivery_id FROM github_deliveries WHERE delivery_id = ANY($1)",
            )
            .bind(&guids)
            .fetch_all(pool)
            .await?
            .into_iter()
            .collect();
            for d in switchyard_github::to_redeliver(&deliveries, &|g| known.contains(g)) {
                match github.redeliver(repository, hook, d.id).await {
                    Ok(()) => report.redelivered.push(d.guid.clone()),
                    Err(e) => report
                        .errors
                        .push(format!("{repository} hook {hook} delivery {}: {e}", d.guid)),
                }
            }
        }
    }
    tracing::info!(
        repositories = report.repositories,
        hooks = report.hooks,
        attempts = report.attempts,
        redelivered = report.redelivered.len(),
        errors = report.errors.len(),
        "GitHub delivery catch-up done"
    );
    Ok(report)
}

/// Catches up on missed deliveries
///
/// Asks GitHub for the last 72 hours of deliveries of the hooks that point at this server, on
/// the repositories of GitHub workspaces, and redelivers those that never reached it. Admin
/// scope, every workspace.
#[utoipa::path(
    post,
    path = "/v1/github/catch-up",
    tag = "github",
    operation_id = "github_catch_up",
    responses(
        (status = 200, description = "Done; `errors` lists what failed, the rest went on", body = CatchUpReport),
        (status = 403, description = "Not an admin token for every workspace", body = ApiError),
        (status = 409, description = "This server has no GitHub token (`github_not_configured`)", body = ApiError),
    )
)]
pub(crate) async fn catch_up_route(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
) -> Result<Response, ApiError> {
    principal.require(None, Scope::Admin)?;
    let Some(github) = state.github.clone() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "github_not_configured",
            "this server has no GitHub token (SWITCHYARD_GITHUB__TOKEN), so it cannot ask GitHub for deliveries",
        ));
    };
    let report = catch_up(state.store.pool(), &github, 72)
        .await
        .map_err(|e| ApiError::internal(&e))?;
    Ok(Json(report).into_response())
}

/// Refuses a declared body larger than the webhook limit before reading any of it.
pub(crate) fn declared_too_large(headers: &HeaderMap, limit: usize) -> bool {
    header_str(headers, header::CONTENT_LENGTH.as_str())
        .and_then(|v| v.parse::<u64>().ok())
        .is_some_and(|n| n > limit as u64)
}
