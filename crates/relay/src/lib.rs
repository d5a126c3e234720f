//! The relay: the only thing that publishes to NATS. It follows the event store in global order
//! and publishes each event to JetStream, awaiting the acknowledgements before it moves its
//! checkpoint (kept in PostgreSQL).
//!
//! Invariants it owns:
//! - **one active relay**: a PostgreSQL advisory lock, held on a connection of its own, elects
//!   the relay among server instances; the others stand by and take over when it is released
//!   (its holder stopped or died);
//! - **nothing lost**: the checkpoint moves only after JetStream acknowledged every message up
//!   to it; a crash in between re-publishes, and `Nats-Msg-Id` lets JetStream drop the copies
//!   inside its duplicate window (consumers stay effectively-once outside it);
//! - **JetStream is not the truth**: a reconciler notices a stream that is missing, was
//!   recreated, or holds fewer messages than were acknowledged, and relays again from the start.
//!
//! Message format: the subject is `<prefix>.<workspace>.<type>` (see [`subject`]); the body is
//! the CloudEvent in JSON (structured mode, `application/cloudevents+json`); headers repeat the
//! main attributes for routing and tracing: `ce-id`, `ce-source`, `ce-type`, `ce-subject`,
//! `ce-workspace`, `ce-sequence`, and `traceparent` when the event has one. `Nats-Msg-Id` is
//! `<workspace>:<sequence>` — the store's global position, unique in the store, where event ids
//! are unique only per workspace and source.

use std::{
    future::IntoFuture as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::jetstream::{self, context::Context, stream};
use bytes::Bytes;
use futures::future::try_join_all;
use serde::Deserialize;
use sqlx::{Connection, PgConnection};
use switchyard_events::{Cursor, RecordedEvent, subject};
use switchyard_store::{EventStore, ReadFilter, Wakeups};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

/// Result of the relay.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What stops a relay pass; the relay logs it, waits and starts over from its checkpoint.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The store failed.
    #[error("event store: {0}")]
    Store(#[from] switchyard_store::Error),
    /// JetStream refused or did not acknowledge.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The advisory lock's connection was lost: another instance may be relaying now.
    #[error("lost the relay lock")]
    LostLock,
}

fn js<E: std::fmt::Display>(e: E) -> Error {
    Error::JetStream(e.to_string())
}

/// Relay settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RelayConfig {
    /// The JetStream stream that captures `<subject_prefix>.>`.
    pub stream: String,
    /// First subject token; different prefixes isolate tenants or tests on one server.
    pub subject_prefix: String,
    /// Events read and published per round.
    pub batch: u32,
    /// JetStream's duplicate window for `Nats-Msg-Id`, in seconds.
    pub duplicate_window_secs: u64,
    /// Replicas of the stream (1 on a single server, 3 on a cluster).
    pub replicas: usize,
    /// How often the reconciler checks the stream, and the longest idle wait, in milliseconds.
    pub reconcile_interval_ms: u64,
    /// How long a standby waits between attempts to take the lock, in milliseconds.
    pub standby_retry_ms: u64,
    /// After a short page, how long events may gather before the next round, in
    /// milliseconds: under a stream of small commits the relay then reads, publishes and
    /// checkpoints about once per this time instead of once per commit. 0: at once.
    pub coalesce_ms: u64,
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            stream: "SWITCHYARD".into(),
            subject_prefix: "sy".into(),
            batch: 1_000,
            duplicate_window_secs: 120,
            replicas: 1,
            reconcile_interval_ms: 2_000,
            standby_retry_ms: 1_000,
            coalesce_ms: 2,
        }
    }
}

/// The relay of one stream. Run it on every instance: one relays, the others stand by.
#[derive(Debug, Clone)]
pub struct Relay {
    store: EventStore,
    jetstream: Context,
    config: RelayConfig,
    active: Arc<AtomicBool>,
}

/// The relay's checkpoint row.
#[derive(Debug, Clone, Default)]
struct Checkpoint {
    cursor: Cursor,
    stream_created: Option<String>,
    stream_sequence: u64,
    relayed: i64,
}

impl Relay {
    /// A relay from `store` into JetStream through `client`.
    pub fn new(store: EventStore, client: async_nats::Client, config: RelayConfig) -> Self {
        Self {
            store,
            jetstream: jetstream::new(client),
            config,
            active: Arc::default(),
        }
    }

    /// Whether this instance holds the lock and relays right now.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::SeqCst)
    }

    /// The stream's configuration. `sync_interval: always` is a server setting (2.10+), not a
    /// stream one: see `deploy/nats-server.conf`.
    fn stream_config(&self) -> stream::Config {
        stream::Config {
            name: self.config.stream.clone(),
            subjects: vec![format!("{}.>", self.config.subject_prefix)],
            duplicate_window: Duration::from_secs(self.config.duplicate_window_secs),
            num_replicas: self.config.replicas,
            storage: stream::StorageType::File,
            ..Default::default()
        }
    }

    /// Runs until `shutdown`: takes the lock when it can, relays while it holds it.
    pub async fn run(self, shutdown: CancellationToken) {
        let retry = Duration::from_millis(self.config.standby_retry_ms);
        while !shutdown.is_cancelled() {
            match self.lead(&shutdown).await {
                Ok(false) => {
                    tracing::debug!(stream = %self.config.stream, "another instance relays; standing by");
                }
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(error = %e, stream = %self.config.stream, "relay stopped; starting over")
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tokio::time::sleep(retry) => {}
            }
        }
    }

    /// Tries to become the active relay; relays until shutdown or an error. `Ok(false)`: the
    /// lock is held elsewhere.
    async fn lead(&self, shutdown: &CancellationToken) -> Result<bool> {
        let options = self.store.pool().connect_options();
        let mut lock = PgConnection::connect_with(&options).await?;
        let key = format!("switchyard.relay.{}", self.config.stream);
        let won: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock(hashtextextended($1, 0))")
            .bind(&key)
            .fetch_one(&mut lock)
            .await?;
        if !won {
            let _ = lock.close().await;
            return Ok(false);
        }
        tracing::info!(stream = %self.config.stream, "this instance is the active relay");
        // This connection only follows the store: its reads walk the global-order index even
        // with stale statistics (a relay starting over from position 0 read every page
        // with a sort of the whole rest of the table).
        switchyard_store::ordered_scans_only(&mut lock, false).await?;
        // Its checkpoint commits do not wait for the WAL flush (the appends' commits, which
        // must, then share the disk with nothing of the relay's: a raw 100-row insert took
        // 3.6 ms instead of 3.0 beside 1 200 small flushed commits a second, 3.1 beside
        // unflushed ones). A checkpoint lost in a crash only means publishing its events
        // again: JetStream drops them by `Nats-Msg-Id` within its window, and agents by their
        // "handled" records after it.
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut lock)
            .await?;
        self.active.store(true, Ordering::SeqCst);
        let result = self.relay(&mut lock, shutdown).await;
        self.active.store(false, Ordering::SeqCst);
        // Closing the connection releases the lock for a standby.
        let _ = lock.close().await;
        result.map(|()| true)
    }

    async fn relay(&self, lock: &mut PgConnection, shutdown: &CancellationToken) -> Result<()> {
        let mut wakeups = Wakeups::listen(&self.store).await?;
        let idle = Duration::from_millis(self.config.reconcile_interval_ms);
        let mut checkpoint = self.load_checkpoint().await?;
        let mut next_reconcile = tokio::time::Instant::now();
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            if tokio::time::Instant::now() >= next_reconcile {
                self.reconcile(&mut checkpoint).await?;
                next_reconcile = tokio::time::Instant::now() + idle;
            }
            // Still the leader? A lost connection means the lock is gone. Paused by an
            // operator? Then publish nothing, and look again soon.
            let paused: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM relay_pauses WHERE stream = $1)")
                    .bind(&self.config.stream)
                    .fetch_one(&mut *lock)
                    .await
                    .map_err(|_| Error::LostLock)?;
            if paused {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
                continue;
            }

            // On the lock's connection, as the checkpoint below: no pool round trips.
            let page = self
                .store
                .read_all_on(
                    &mut *lock,
                    checkpoint.cursor,
                    &ReadFilter::default(),
                    self.config.batch,
                )
                .await?;
            let full = page.events.len() == self.config.batch as usize;
            if !page.events.is_empty() {
                let last_sequence = self.publish(&page.events).await?;
                checkpoint.stream_sequence = checkpoint.stream_sequence.max(last_sequence);
                checkpoint.relayed += page.events.len() as i64;
                checkpoint.cursor = page.next;
                self.save_checkpoint(&mut *lock, &checkpoint).await?;
                tracing::debug!(events = page.events.len(), cursor = %checkpoint.cursor, "relayed");
            } else {
                checkpoint.cursor = page.next;
            }
            if !full && !page.events.is_empty() && self.config.coalesce_ms > 0 {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(Duration::from_millis(self.config.coalesce_ms)) => {}
                }
                continue;
            }
            if !full {
                // Caught up: sleep until new events commit (or the watermark may have moved:
                // an event that was held back by an older transaction shows up on the next
                // round, woken by that transaction's own notification or the idle timeout).
                let wait = if page.held_back {
                    Duration::from_millis(5)
                } else if page.events.is_empty() {
                    idle
                } else {
                    Duration::from_millis(1)
                };
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = wakeups.wait(wait) => {}
                }
            }
        }
    }

    /// Publishes the events in order, with their acks awaited together; returns the last
    /// JetStream sequence.
    #[tracing::instrument(name = "relay.publish_batch", skip_all, fields(events = events.len()))]
    async fn publish(&self, events: &[RecordedEvent]) -> Result<u64> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            // One span per event, in the trace of the span that wrote it.
            let span = tracing::info_span!(
                "relay.publish",
                event.id = %event.id,
                event.r#type = %event.ty,
                event.sequence = event.position,
            );
            switchyard_telemetry::continue_from(&span, event.traceparent.as_deref());
            let body = event.to_structured_json().map_err(js)?;
            let mut message = jetstream::message::PublishMessage::build()
                .payload(Bytes::from(body))
                .message_id(format!("{}:{}", event.workspace, event.position))
                .header("Content-Type", "application/cloudevents+json")
                .header("ce-id", event.id.as_str())
                .header("ce-source", event.source.as_str())
                .header("ce-type", event.ty.as_str())
                .header("ce-subject", event.stream.as_str())
                .header("ce-workspace", event.workspace.as_str())
                .header("ce-sequence", event.position.to_string().as_str());
            if let Some(traceparent) = &event.traceparent {
                message = message.header("traceparent", traceparent.as_str());
            }
            let subject = subject(&self.config.subject_prefix, &event.workspace, &event.ty);
            let ack = self
                .jetstream
                .send_publish(subject, message)
                .instrument(span)
                .await
                .map_err(js)?;
            acks.push(ack.into_future());
        }
        let acks = try_join_all(acks).await.map_err(js)?;
        switchyard_telemetry::metrics()
            .relayed
            .inc_by(u64::try_from(acks.len()).unwrap_or_default());
        Ok(acks.iter().map(|a| a.sequence).max().unwrap_or_default())
    }

    /// Makes sure the stream exists and still holds what was relayed; otherwise starts over.
    async fn reconcile(&self, checkpoint: &mut Checkpoint) -> Result<()> {
        check_server_version(&self.jetstream.client().server_info().version)?;
        let mut stream = self
            .jetstream
            .get_or_create_stream(self.stream_config())
            .await
            .map_err(js)?;
        let info = stream.info().await.map_err(js)?;
        let created = info.created.to_string();
        let recreated = checkpoint
            .stream_created
            .as_ref()
            .is_some_and(|c| *c != created);
        let lost = info.state.last_sequence < checkpoint.stream_sequence;
        if recreated || lost || checkpoint.stream_created.is_none() {
            if recreated || lost {
                tracing::warn!(
                    stream = %self.config.stream,
                    recreated,
                    last_sequence = info.state.last_sequence,
                    acknowledged = checkpoint.stream_sequence,
                    "JetStream stream is missing or behind the store; relaying everything again"
                );
                *checkpoint = Checkpoint::default();
            }
            checkpoint.stream_created = Some(created);
            checkpoint.stream_sequence = info.state.last_sequence;
            self.save_checkpoint(self.store.pool(), checkpoint).await?;
        }
        Ok(())
    }

    async fn load_checkpoint(&self) -> Result<Checkpoint> {
        let row: Option<(i64, i64, Option<String>, i64, i64)> = sqlx::query_as(
            "SELECT transaction_id, position, stream_created, stream_sequence, relayed
             FROM relay_checkpoints WHERE stream = $1",
        )
        .bind(&self.config.stream)
        .fetch_optional(self.store.pool())
        .await?;
        Ok(row.map_or_else(
            Checkpoint::default,
            |(tx, position, created, seq, relayed)| Checkpoint {
                cursor: Cursor {
                    transaction: u64::try_from(tx).unwrap_or_default(),
                    position,
                },
                stream_created: created,
                stream_sequence: u64::try_from(seq).unwrap_or_default(),
                relayed,
            },
        ))
    }

    async fn save_checkpoint<'c, E>(&self, executor: E, checkpoint: &Checkpoint) -> Result<()>
    where
        E: sqlx::PgExecutor<'c>,
    {
        sqlx::query(
            "INSERT INTO relay_checkpoints
                 (stream, transaction_id, position, stream_created, stream_sequence, relayed, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, now())
             ON CONFLICT (stream) DO UPDATE SET
                 transaction_id = $2, position = $3, stream_created = $4,
                 stream_sequence = $5, relayed = $6, updated_at = now()",
        )
        .bind(&self.config.stream)
        .bind(i64::try_from(checkpoint.cursor.transaction).unwrap_or(i64::MAX))
        .bind(checkpoint.cursor.position)
        .bind(&checkpoint.stream_created)
        .bind(i64::try_from(checkpoint.stream_sequence).unwrap_or(i64::MAX))
        .bind(checkpoint.relayed)
        .execute(executor)
        .await?;
        Ok(())
    }

    /// Where the relay stands: its cursor and how many visible events it has not relayed yet
    /// (counted up to `cap`).
    pub async fn status(&self, cap: i64) -> Result<RelayStatus> {
        let checkpoint = self.load_checkpoint().await?;
        let lag = self.store.lag(checkpoint.cursor, cap).await?;
        // The oldest event not relayed yet: how far behind, in time.
        let oldest = self
            .store
            .read_all(checkpoint.cursor, &ReadFilter::default(), 1)
            .await?
            .events
            .into_iter()
            .next();
        let lag_seconds = oldest.map_or(0.0, |e| {
            (chrono::Utc::now() - e.time)
                .to_std()
                .map_or(0.0, |d| d.as_secs_f64())
        });
        let paused_by: Option<String> =
            sqlx::query_scalar("SELECT paused_by FROM relay_pauses WHERE stream = $1")
                .bind(&self.config.stream)
                .fetch_optional(self.store.pool())
                .await?;
        Ok(RelayStatus {
            stream: self.config.stream.clone(),
            cursor: checkpoint.cursor.to_string(),
            relayed: checkpoint.relayed,
            stream_sequence: checkpoint.stream_sequence,
            lag_events: lag,
            lag_seconds,
            paused_by,
        })
    }

    /// Pauses (`Some(by)`) or resumes (`None`) the relay of this stream, on whichever
    /// instance is active (it looks every 200 ms while paused).
    pub async fn set_paused(&self, by: Option<&str>) -> Result<()> {
        match by {
            Some(by) => {
                sqlx::query(
                    "INSERT INTO relay_pauses (stream, paused_by) VALUES ($1, $2)
                     ON CONFLICT (stream) DO NOTHING",
                )
                .bind(&self.config.stream)
                .bind(by)
                .execute(self.store.pool())
                .await?;
            }
            None => {
                sqlx::query("DELETE FROM relay_pauses WHERE stream = $1")
                    .bind(&self.config.stream)
                    .execute(self.store.pool())
                    .await?;
            }
        }
        Ok(())
    }
}

/// Refuses nats-server versions older than 2.9: Switchyard relies on JetStream with
/// `Nats-Msg-Id` de-duplication and one filter subject per consumer, which 2.9 has. (An empty
/// version means not connected yet; the publish will fail and be retried.)
fn check_server_version(version: &str) -> Result<()> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if !version.is_empty() && (major, minor) < (2, 9) {
        return Err(Error::JetStream(format!(
            "nats-server {version} is too old: Switchyard needs 2.9 or later"
        )));
    }
    Ok(())
}

/// The relay's position, for operators.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RelayStatus {
    /// The JetStream stream.
    pub stream: String,
    /// The checkpoint.
    pub cursor: String,
    /// Events relayed since the stream was (re)created.
    pub relayed: i64,
    /// The last JetStream sequence acknowledged.
    pub stream_sequence: u64,
    /// Visible events not relayed yet (capped).
    pub lag_events: i64,
    /// Age of the oldest event not relayed yet, in seconds (0 when caught up).
    pub lag_seconds: f64,
    /// Who paused the relay, while it is paused.
    pub paused_by: Option<String>,
}

#[cfg(test)]
mod tests {
    #[test]
    fn old_servers_are_refused() {
        assert!(super::check_server_version("2.9.10").is_ok());
        assert!(super::check_server_version("2.12.1").is_ok());
        assert!(super::check_server_version("3.0.0").is_ok());
        assert!(super::check_server_version("").is_ok());
        assert!(super::check_server_version("2.8.4").is_err());
        assert!(super::check_server_version("1.4.0").is_err());
    }
}
