//! The ops API's view of the running machinery.

use futures::future::BoxFuture;
use serde_json::{Value, json};
use switchyard_agent_runtime::{AgentRuntime, ConsumerStatus, Error as RuntimeError};
use switchyard_events::Cursor;
use switchyard_http_api::{Ops, OpsError};
use switchyard_projections::ProjectionRunner;
use switchyard_relay::Relay;
use switchyard_store::EventStore;

/// Lag counts stop here, to keep the status cheap however far behind something is.
const LAG_CAP: i64 = 100_000;

/// How long the consumers' figures are reused. nats-server computes each filtered consumer's
/// pending count when asked (one request per consumer, about 30), and the dashboard's agents
/// and ops pages, `switchyard status` and the metrics scrape all ask.
const CONSUMERS_TTL: std::time::Duration = std::time::Duration::from_secs(2);

#[derive(Debug)]
pub(crate) struct ServerOps {
    pub(crate) store: EventStore,
    pub(crate) relay: Relay,
    pub(crate) projections: ProjectionRunner,
    pub(crate) runtime: AgentRuntime,
    /// The consumers' figures and when they were read; the lock also makes concurrent asks
    /// wait for one read instead of each starting its own.
    pub(crate) consumers: tokio::sync::Mutex<Option<(std::time::Instant, Vec<ConsumerStatus>)>>,
    /// The events counted so far: how many, and up to where in the global order.
    counted: tokio::sync::Mutex<(Cursor, i64)>,
}

impl ServerOps {
    pub(crate) fn new(
        store: EventStore,
        relay: Relay,
        projections: ProjectionRunner,
        runtime: AgentRuntime,
    ) -> Self {
        Self {
            store,
            relay,
            projections,
            runtime,
            consumers: tokio::sync::Mutex::new(None),
            counted: tokio::sync::Mutex::new((Cursor::START, 0)),
        }
    }

    /// The store's head position, and how many events lie below the watermark of the global
    /// order (every committed event but those of transactions younger than the oldest one
    /// still open, as the relay and the projections see them). The count goes on from the
    /// last one: an exact `count(*)` walked the whole table on every status (21-37 ms at
    /// 100 000 events, the most of the dashboard's agents and ops pages).
    async fn head_and_count(&self) -> Result<(Option<i64>, i64), OpsError> {
        let mut counted = self.counted.lock().await;
        let (cursor, total) = *counted;
        let found = self.store.count_after(cursor).await.map_err(internal)?;
        *counted = (found.next, total + found.events);
        Ok((found.head, total + found.events))
    }

    /// The consumers' figures, at most [`CONSUMERS_TTL`] old, and their age.
    async fn consumers(&self) -> Result<(Vec<ConsumerStatus>, std::time::Duration), OpsError> {
        let mut cached = self.consumers.lock().await;
        if let Some((at, consumers)) = &*cached
            && at.elapsed() < CONSUMERS_TTL
        {
            return Ok((consumers.clone(), at.elapsed()));
        }
        let consumers = self.runtime.status().await.map_err(internal)?;
        *cached = Some((std::time::Instant::now(), consumers.clone()));
        Ok((consumers, std::time::Duration::ZERO))
    }
}

fn internal<E: std::fmt::Display>(e: E) -> OpsError {
    OpsError::Internal(e.to_string())
}

impl Ops for ServerOps {
    fn status(&self) -> BoxFuture<'_, Result<Value, OpsError>> {
        Box::pin(async move {
            // The four parts at once: the answer takes the slowest, not their sum.
            let store = self.head_and_count();
            let relay = async { self.relay.status(LAG_CAP).await.map_err(internal) };
            let projections = async { self.projections.status(LAG_CAP).await.map_err(internal) };
            let ((head, events), relay, (consumers, age), projections) =
                tokio::try_join!(store, relay, self.consumers(), projections)?;
            Ok(json!({
                "store": {"head_sequence": head, "events": events},
                "relay": {"active_here": self.relay.is_active(), "status": relay},
                "consumers": consumers,
                "consumers_age_ms": u64::try_from(age.as_millis()).unwrap_or(u64::MAX),
                "projections": projections,
                "lag_cap": LAG_CAP,
            }))
        })
    }

    fn snapshot(&self) -> BoxFuture<'_, Result<switchyard_telemetry::Snapshot, OpsError>> {
        Box::pin(async move {
            let head: Option<i64> = sqlx::query_scalar("SELECT max(position) FROM events")
                .fetch_one(self.store.pool())
                .await
                .map_err(internal)?;
            let dead_letters: i64 =
                sqlx::query_scalar("SELECT count(*) FROM dead_letters WHERE resolved_at IS NULL")
                    .fetch_one(self.store.pool())
                    .await
                    .map_err(internal)?;
            let relay = self.relay.status(LAG_CAP).await.map_err(internal)?;
            let (consumers, _) = self.consumers().await?;
            let projections = self.projections.status(LAG_CAP).await.map_err(internal)?;
            Ok(switchyard_telemetry::Snapshot {
                head_position: head.unwrap_or_default(),
                relay_active: self.relay.is_active(),
                relay_paused: relay.paused_by.is_some(),
                relay_lag_events: relay.lag_events,
                relay_lag_seconds: relay.lag_seconds,
                consumers: consumers
                    .into_iter()
                    .map(|c| switchyard_telemetry::ConsumerFigures {
                        agent: c.agent,
                        event_type: c.event_type,
                        pending: c.pending,
                        ack_pending: u64::try_from(c.ack_pending).unwrap_or(u64::MAX),
                        redelivered: u64::try_from(c.redelivered).unwrap_or(u64::MAX),
                    })
                    .collect(),
                projections: projections
                    .into_iter()
                    .map(|p| (p.name, p.lag_events))
                    .collect(),
                dead_letters,
                debug_mode: false, // the route fills it in
            })
        })
    }

    fn pause_relay<'a>(&'a self, by: Option<&'a str>) -> BoxFuture<'a, Result<Value, OpsError>> {
        Box::pin(async move {
            self.relay.set_paused(by).await.map_err(internal)?;
            let relay = self.relay.status(LAG_CAP).await.map_err(internal)?;
            Ok(json!({"paused": relay.paused_by.is_some(), "relay": relay}))
        })
    }

    fn dead_letters(&self) -> BoxFuture<'_, Result<Value, OpsError>> {
        Box::pin(async move {
            let letters = self.runtime.dead_letters(false).await.map_err(internal)?;
            Ok(json!({ "dead_letters": letters }))
        })
    }

    fn retry_dead_letter(&self, id: uuid::Uuid) -> BoxFuture<'_, Result<Value, OpsError>> {
        Box::pin(async move {
            match self.runtime.retry_dead_letter(id).await {
                Ok(letter) => Ok(json!(letter)),
                Err(e @ (RuntimeError::NoDeadLetter(_) | RuntimeError::UnknownAgent(_))) => {
                    Err(OpsError::NotFound(e.to_string()))
                }
                Err(e @ RuntimeError::StillFailing(_)) => Err(OpsError::Failed(e.to_string())),
                Err(e) => Err(internal(e)),
            }
        })
    }
}

/// The runtime's dead-letter retry, for `/switchyard retry` comments.
#[derive(Debug)]
pub(crate) struct RuntimeDeadLetters(pub(crate) AgentRuntime);

impl switchyard_agents::DeadLetters for RuntimeDeadLetters {
    fn retry<'a>(
        &'a self,
        workspace: &'a str,
        id: uuid::Uuid,
    ) -> BoxFuture<'a, Result<String, String>> {
        Box::pin(async move {
            // Another workspace's dead letter answers exactly like a missing one.
            let letters = self.0.dead_letters(true).await.map_err(|e| e.to_string())?;
            if !letters
                .iter()
                .any(|l| l.id == id && l.workspace == workspace)
            {
                return Err(format!(
                    "There is no unresolved dead letter {id} in workspace {workspace}."
                ));
            }
            self.0
                .retry_dead_letter(id)
                .await
                .map(|letter| {
                    format!(
                        "Retried: agent {} handled event {} ({}).",
                        letter.agent, letter.event_id, letter.event_type
                    )
                })
                .map_err(|e| e.to_string())
        })
    }
}
