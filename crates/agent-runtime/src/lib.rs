//! The agent runtime: every agent is a set of JetStream durable pull consumers, one per
//! subscribed event type (one filter subject each, which nats-server 2.9 supports), shared by
//! all server instances — more instances, more throughput, no duplicate work.
//!
//! Invariants it owns:
//! - **effectively once**: the record that agent A handled event X (`agent_handled`) and the
//!   events A emitted for X commit in one transaction; a redelivery of X finds the record and
//!   is only acknowledged. The JetStream ack comes after the commit;
//! - **an agent emits only what its manifest declares**, each event caused by the handled one
//!   (`causationid`) and in its correlation;
//! - **a poison event never blocks the others**: a failure is NAKed with backoff while later
//!   events proceed; after `max_deliver` deliveries the event is dead-lettered
//!   (`agent.failed.v1` and a `dead_letters` row, in one transaction) and terminated.

mod agent;
mod messages;

use std::{sync::Arc, time::Duration};

use async_nats::jetstream::{
    self, AckKind,
    consumer::{AckPolicy, DeliverPolicy, pull},
};
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::Connection;
use switchyard_events::{
    EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace, encode_type,
    type_filter,
};
use switchyard_store::EventStore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

pub use agent::{Agent, Context, HandlerError, MEMORY_RECORDED, Manifest, WorkContext};
pub use messages::{MESSAGE_ACKNOWLEDGED, MESSAGE_SENT, Message, inbox};

/// The workspace that holds Switchyard's own events (agent registrations).
pub const SYSTEM_WORKSPACE: &str = "system";

/// Result of the runtime.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in the runtime itself (handler failures are [`HandlerError`]s).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL failed.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// The store refused or failed.
    #[error("event store: {0}")]
    Store(#[from] switchyard_store::Error),
    /// JetStream failed.
    #[error("JetStream: {0}")]
    JetStream(String),
    /// No dead letter has this id, or it was already resolved.
    #[error("no unresolved dead letter {0}")]
    NoDeadLetter(uuid::Uuid),
    /// No agent has this name.
    #[error("no agent named {0:?}")]
    UnknownAgent(String),
    /// The relay has not created the JetStream stream yet (or it was deleted): consumers wait.
    #[error("JetStream stream {0} does not exist (yet)")]
    StreamMissing(String),
    /// The handler failed again on retry.
    #[error("the handler failed again: {0}")]
    StillFailing(HandlerError),
}

/// What became of one event of a batch.
enum Outcome {
    /// Handled now or before: acknowledge.
    Done,
    /// The handler failed: NAK with backoff, or dead-letter.
    Failed(HandlerError),
    /// Lost a race for a stream version: run it again alone.
    Race,
    /// The batch's transaction failed as a whole: redeliver soon.
    Retry,
}

/// Why one attempt at handling did not commit.
enum Failure {
    /// The handler (or the database under it) failed.
    Handler(HandlerError),
    /// A concurrent writer took a stream version first: try again.
    Race,
}

impl From<HandlerError> for Failure {
    fn from(e: HandlerError) -> Self {
        Self::Handler(e)
    }
}

/// Runs an agent's handler in its `agent.handle` span (the event's trace), timing it.
async fn run_handler(
    agent: &Arc<dyn Agent>,
    ctx: &mut Context<'_>,
    event: &RecordedEvent,
) -> Result<(), HandlerError> {
    let name = &agent.manifest().name;
    let started = std::time::Instant::now();
    let handled = agent
        .handle(ctx, event)
        .instrument(agent::handle_span(name, event))
        .await;
    switchyard_telemetry::metrics().handle_time(name, started.elapsed().as_secs_f64());
    handled
}

fn js<E: std::fmt::Display>(e: E) -> Error {
    Error::JetStream(e.to_string())
}

/// Runtime settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Deliveries before an event is dead-lettered.
    pub max_deliver: i64,
    /// How long JetStream waits for an ack before it redelivers, in seconds.
    pub ack_wait_secs: u64,
    /// First retry delay, doubled per delivery, in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// Batches handled at once per consumer and instance.
    pub concurrency: usize,
    /// Most deliveries handled in one transaction (one commit).
    pub batch: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            max_deliver: 5,
            ack_wait_secs: 30,
            backoff_base_ms: 250,
            backoff_max_ms: 10_000,
            concurrency: 4,
            batch: 64,
        }
    }
}

/// A dead-lettered event, for operators.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    /// Its id (for retry).
    pub id: uuid::Uuid,
    /// The agent that gave up.
    pub agent: String,
    /// The event's global position.
    pub event_position: i64,
    /// The event's workspace.
    pub workspace: String,
    /// The event's id.
    pub event_id: String,
    /// The event's type.
    pub event_type: String,
    /// Deliveries before it gave up.
    pub deliveries: i32,
    /// The last error.
    pub error: String,
    /// When it gave up.
    pub failed_at: chrono::DateTime<chrono::Utc>,
    /// When a retry handled it.
    pub resolved_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// One consumer's state, for operators.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    /// The agent.
    pub agent: String,
    /// The event type it consumes.
    pub event_type: String,
    /// The durable consumer's name.
    pub consumer: String,
    /// Messages not delivered yet.
    pub pending: u64,
    /// Delivered, not acknowledged yet.
    pub ack_pending: usize,
    /// Messages delivered more than once.
    pub redelivered: usize,
    /// When the agent last handled an event (any type).
    pub last_handled: Option<chrono::DateTime<chrono::Utc>>,
}

/// The runtime of a set of agents.
#[derive(Clone)]
pub struct AgentRuntime {
    store: EventStore,
    jetstream: jetstream::Context,
    stream: String,
    subject_prefix: String,
    config: RuntimeConfig,
    agents: Vec<Arc<dyn Agent>>,
}

impl std::fmt::Debug for AgentRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .agents
            .iter()
            .map(|a| a.manifest().name.as_str())
            .collect();
        f.debug_struct("AgentRuntime")
            .field("stream", &self.stream)
            .field("agents", &names)
            .finish()
    }
}

/// The version of the stream `agent/<name>` (workspace `system`) and the agent's last
/// `agent.registered.v1` on it. The last registration, not the stream's last event: the stream
/// also holds the agent's `agent.failed.v1` for events of the `system` workspace.
pub async fn last_registration(
    store: &EventStore,
    name: &str,
) -> Result<(u64, Option<RecordedEvent>)> {
    let workspace = Workspace::parse(SYSTEM_WORKSPACE).map_err(js)?;
    let stream = StreamId::parse(&format!("agent/{name}")).map_err(js)?;
    let (version, registered): (Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT max(stream_version),
                max(stream_version) FILTER (WHERE type = 'agent.registered.v1')
         FROM events WHERE workspace = $1 AND stream_id = $2",
    )
    .bind(workspace.as_str())
    .bind(stream.as_str())
    .fetch_one(store.pool())
    .await
    .map_err(switchyard_store::Error::from)?;
    let version = u64::try_from(version.unwrap_or(0)).unwrap_or(0);
    let last = match registered.and_then(|v| u64::try_from(v).ok()) {
        Some(at) => store
            .read_stream(&workspace, &stream, at.saturating_sub(1), 1)
            .await?
            .into_iter()
            .next(),
        None => None,
    };
    Ok((version, last))
}

/// The durable consumer of one agent for one type: `<agent>--<type as a token>`.
pub fn consumer_name(agent: &str, ty: &EventType) -> String {
    format!("{agent}--{}", encode_type(ty).replace('.', "_"))
}

/// The durable pull consumer of `agent` for `ty` on `stream`, created when missing: the
/// built-in agents' and the external agents' (registered over HTTP) alike.
pub async fn ensure_consumer(
    jetstream: &jetstream::Context,
    stream: &str,
    subject_prefix: &str,
    agent: &str,
    ty: &EventType,
    config: &RuntimeConfig,
) -> Result<jetstream::consumer::Consumer<pull::Config>> {
    let stream_name = stream;
    let stream = jetstream
        .get_stream(stream_name)
        .await
        .map_err(|e| match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(inner)
                if inner.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                Error::StreamMissing(stream_name.to_owned())
            }
            _ => js(e),
        })?;
    let name = consumer_name(agent, ty);
    stream
        .get_or_create_consumer(
            &name,
            pull::Config {
                durable_name: Some(name.clone()),
                filter_subject: type_filter(subject_prefix, ty),
                ack_policy: AckPolicy::Explicit,
                deliver_policy: DeliverPolicy::All,
                ack_wait: Duration::from_secs(config.ack_wait_secs),
                // Switchyard dead-letters at `max_deliver` itself; JetStream's own limit is a
                // safety net above it, so that an event whose dead-lettering failed (the
                // database was away) is still delivered again rather than stranded.
                max_deliver: config.max_deliver.saturating_add(10),
                // Deliveries out at once over all instances: room for each instance's
                // prefetch (the client pulls 200 at a time) and in-flight batches, for
                // many instances. At 1 000, two instances' prefetch left a third nothing.
                max_ack_pending: 20_000,
                ..Default::default()
            },
        )
        .await
        .map_err(js)
}

impl AgentRuntime {
    /// A runtime consuming the relay's `stream` (subjects `<subject_prefix>.>`).
    pub fn new(
        store: EventStore,
        client: async_nats::Client,
        stream: &str,
        subject_prefix: &str,
        config: RuntimeConfig,
        agents: Vec<Arc<dyn Agent>>,
    ) -> Self {
        Self {
            store,
            jetstream: jetstream::new(client),
            stream: stream.to_owned(),
            subject_prefix: subject_prefix.to_owned(),
            config,
            agents,
        }
    }

    /// The agents' manifests.
    pub fn manifests(&self) -> Vec<Manifest> {
        self.agents.iter().map(|a| a.manifest().clone()).collect()
    }

    /// Appends `agent.registered.v1` for each agent whose manifest changed since it last
    /// registered (in the `system` workspace, stream `agent/<name>`).
    pub async fn register(&self) -> Result<()> {
        let workspace = Workspace::parse(SYSTEM_WORKSPACE).map_err(js)?;
        for agent in &self.agents {
            let manifest = agent.manifest();
            let stream = StreamId::parse(&format!("agent/{}", manifest.name)).map_err(js)?;
            let (version, last) = last_registration(&self.store, &manifest.name).await?;
            let hash = manifest.hash();
            if last.is_some_and(|e| {
                e.data.get("manifest_hash").and_then(|h| h.as_str()) == Some(hash.as_str())
            }) {
                continue;
            }
            let event = NewEvent::new(
                workspace.clone(),
                Source::parse(&format!("/agents/{}", manifest.name)).map_err(js)?,
                EventType::parse("agent.registered.v1").map_err(js)?,
                stream,
                manifest.registration(),
            )
            .expecting(ExpectedVersion::Exactly(version));
            match self.store.append(vec![event]).await {
                // Another instance registered the same manifest first.
                Ok(_) | Err(switchyard_store::Error::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
            tracing::info!(agent = %manifest.name, version = %manifest.version, "agent registered");
        }
        Ok(())
    }

    /// Consumes until `shutdown`: one task per agent and subscribed type.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = Vec::new();
        for agent in &self.agents {
            for ty in &agent.manifest().subscribes {
                let runtime = self.clone();
                let agent = Arc::clone(agent);
                let ty = ty.clone();
                let shutdown = shutdown.clone();
                tasks.push(tokio::spawn(async move {
                    while !shutdown.is_cancelled() {
                        if let Err(e) = runtime.consume(&agent, &ty, &shutdown).await {
                            if matches!(e, Error::StreamMissing(_)) {
                                tracing::debug!(agent = %agent.manifest().name, error = %e, "waiting for the relay to create the stream");
                            } else {
                                tracing::warn!(agent = %agent.manifest().name, event.r#type = %ty, error = %e, "consumer stopped; restarting");
                            }
                            tokio::select! {
                                () = shutdown.cancelled() => {}
                                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            }
                        }
                    }
                }));
            }
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn consumer(
        &self,
        agent: &str,
        ty: &EventType,
    ) -> Result<jetstream::consumer::Consumer<pull::Config>> {
        ensure_consumer(
            &self.jetstream,
            &self.stream,
            &self.subject_prefix,
            agent,
            ty,
            &self.config,
        )
        .await
    }

    async fn consume(
        &self,
        agent: &Arc<dyn Agent>,
        ty: &EventType,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let consumer = self.consumer(&agent.manifest().name, ty).await?;
        let concurrency = self.config.concurrency.max(1);
        if agent.long_running() {
            return self
                .consume_slots(agent, &consumer, concurrency, shutdown)
                .await;
        }
        // Whatever has arrived is handled as one batch: one transaction, one commit.
        let mut batches = consumer
            .messages()
            .await
            .map_err(js)?
            .ready_chunks(self.config.batch.max(1));
        let mut in_flight = futures::stream::FuturesUnordered::new();
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => break Ok(()),
                Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
                batch = batches.next(), if in_flight.len() < concurrency => {
                    let Some(batch) = batch else {
                        break Err(Error::JetStream("the consumer's message stream ended".into()));
                    };
                    // The deliveries before an error are handled; the rest come again.
                    let mut messages = Vec::with_capacity(batch.len());
                    let mut failed = None;
                    for message in batch {
                        match message {
                            Ok(message) if failed.is_none() => messages.push(message),
                            Ok(_) => {}
                            Err(e) => failed = failed.or(Some(js(e))),
                        }
                    }
                    if !messages.is_empty() {
                        in_flight.push(self.process(agent, messages, shutdown));
                    }
                    if let Some(e) = failed {
                        break Err(e);
                    }
                }
            }
        };
        // Batches under way finish (and are acknowledged) before the consumer is restarted:
        // dropped half-way, they would only come back after the ack wait.
        while in_flight.next().await.is_some() {}
        ended
    }

    /// Long work: each of `slots` pulls one message only when it is free, so that this
    /// instance never holds a delivery it is not working on (a message buffered behind long
    /// runs would outlive its ack wait and be delivered to another instance as well).
    async fn consume_slots(
        &self,
        agent: &Arc<dyn Agent>,
        consumer: &jetstream::consumer::Consumer<pull::Config>,
        slots: usize,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        // One slot's pull failing stops the others' pulls, not their work: a run under way
        // finishes and is acknowledged before the consumer is restarted. (Dropped, it would
        // be delivered again only after its ack wait, and its work would be lost.)
        let stop_pulling = shutdown.child_token();
        let slot = || async {
            while !stop_pulling.is_cancelled() {
                let pulled = tokio::select! {
                    () = stop_pulling.cancelled() => return Ok(()),
                    pulled = async {
                        let mut batch = consumer
                            .batch()
                            .max_messages(1)
                            .expires(Duration::from_secs(5))
                            .messages()
                            .await
                            .map_err(js)?;
                        batch.next().await.transpose().map_err(js)
                    } => pulled,
                };
                match pulled {
                    Ok(Some(message)) => self.process(agent, vec![message], shutdown).await,
                    Ok(None) => {} // the pull expired empty: ask again
                    Err(e) => {
                        stop_pulling.cancel();
                        return Err(e);
                    }
                }
            }
            Ok(())
        };
        let mut running: futures::stream::FuturesUnordered<_> =
            (0..slots).map(|_| slot()).collect();
        let mut first_error = None;
        while let Some(result) = running.next().await {
            if let Err(e) = result {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Handles a batch of deliveries in one transaction, each event under a savepoint of its
    /// own so that one failure rolls back only that event. Never fails: errors become NAKs,
    /// dead letters or redeliveries. Acks go out only after the commit.
    async fn process(
        &self,
        agent: &Arc<dyn Agent>,
        messages: Vec<jetstream::Message>,
        shutdown: &CancellationToken,
    ) {
        let name = agent.manifest().name.as_str();
        let positions: Vec<Option<i64>> = messages
            .iter()
            .map(|m| {
                m.headers
                    .as_ref()
                    .and_then(|h| h.get("ce-sequence"))
                    .and_then(|v| v.as_str().parse::<i64>().ok())
            })
            .collect();
        let wanted: Vec<i64> = positions.iter().flatten().copied().collect();
        let events = match self.store.get_many(&wanted).await {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(agent = name, error = %e, "cannot load events; retrying them");
                for message in &messages {
                    let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
                    let _ = message
                        .ack_with(AckKind::Nak(Some(self.backoff(delivered))))
                        .await;
                }
                return;
            }
        };
        let mut batch: Vec<(jetstream::Message, RecordedEvent)> =
            Vec::with_capacity(messages.len());
        for (message, position) in messages.into_iter().zip(positions) {
            match position.and_then(|p| events.get(&p)) {
                Some(event) => batch.push((message, event.clone())),
                None => {
                    tracing::error!(
                        agent = name,
                        ?position,
                        "a message names no stored event; terminating it"
                    );
                    let _ = message.ack_with(AckKind::Term).await;
                }
            }
        }
        let outcomes = if agent.long_running() {
            let mut outcomes = Vec::with_capacity(batch.len());
            for (message, event) in &batch {
                outcomes.push(self.work_then_handle(agent, message, event, shutdown).await);
            }
            outcomes
        } else {
            match self.handle_batch(agent, &batch).await {
                Ok(outcomes) => outcomes,
                Err(e) => {
                    tracing::warn!(agent = name, error = %e, "batch transaction failed; redelivering");
                    batch.iter().map(|_| Outcome::Retry).collect()
                }
            }
        };
        // Events that lost a race are run again one by one, and may wait for one another's
        // locks: the deliveries not yet answered are kept alive meanwhile, so that their ack
        // wait does not run out and JetStream hand them to another instance as well.
        let keep_alive_every =
            Duration::from_millis((self.config.ack_wait_secs * 1000 / 3).max(100));
        let mut alive_since = std::time::Instant::now();
        let mut pending: std::collections::VecDeque<_> = batch.into_iter().zip(outcomes).collect();
        while let Some(((message, event), outcome)) = pending.pop_front() {
            let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
            let outcome = match outcome {
                // Lost a race for a stream version: run it alone, with its own retries.
                Outcome::Race => {
                    if alive_since.elapsed() >= keep_alive_every {
                        let waiting =
                            std::iter::once(&message).chain(pending.iter().map(|((m, _), _)| m));
                        for m in waiting {
                            let _ = m.ack_with(AckKind::Progress).await;
                        }
                        alive_since = std::time::Instant::now();
                    }
                    match self.handle(agent, &event, None).await {
                        Ok(()) => Outcome::Done,
                        Err(e) => Outcome::Failed(e),
                    }
                }
                other => other,
            };
            match outcome {
                Outcome::Done => {
                    // After the commit. If this ack is lost, the redelivery finds the record.
                    let _ = message.ack().await;
                    switchyard_telemetry::metrics().handled(name, "handled");
                }
                Outcome::Failed(failure) if delivered >= self.config.max_deliver => {
                    match self.dead_letter(name, &event, delivered, &failure).await {
                        Ok(()) => {
                            let _ = message.ack_with(AckKind::Term).await;
                            switchyard_telemetry::metrics().handled(name, "dead_lettered");
                        }
                        Err(e) => {
                            tracing::error!(agent = name, error = %e, "cannot dead-letter; leaving it for redelivery");
                        }
                    }
                }
                Outcome::Failed(failure) => {
                    tracing::warn!(agent = name, event.id = %event.id, delivered, error = %failure, "handler failed; will retry");
                    switchyard_telemetry::metrics().handled(name, "failed");
                    let _ = message
                        .ack_with(AckKind::Nak(Some(self.backoff(delivered))))
                        .await;
                }
                Outcome::Retry | Outcome::Race => {
                    let _ = message.ack_with(AckKind::Nak(Some(self.backoff(1)))).await;
                }
            }
        }
    }

    /// One transaction for the batch. Handlers run first and only read (each under a savepoint,
    /// in case one writes and fails); the writes — the "handled" records and every emitted
    /// event — come last, together. So the transaction holds a transaction id only for those
    /// few milliseconds: every reader of the store waits for the oldest open transaction id of
    /// the cluster, and a long one would delay the relay and the projections.
    #[tracing::instrument(name = "agent.handle_batch", skip_all, fields(agent.name = %agent.manifest().name, events = batch.len()))]
    async fn handle_batch(
        &self,
        agent: &Arc<dyn Agent>,
        batch: &[(jetstream::Message, RecordedEvent)],
    ) -> Result<Vec<Outcome>, sqlx::Error> {
        let manifest = agent.manifest();
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let positions: Vec<i64> = batch.iter().map(|(_, e)| e.position).collect();
        let handled: Vec<i64> = sqlx::query_scalar(
            "SELECT event_position FROM agent_handled WHERE agent = $1 AND event_position = ANY($2)",
        )
        .bind(&manifest.name)
        .bind(&positions)
        .fetch_all(&mut *tx)
        .await?;

        let mut outcomes = Vec::with_capacity(batch.len());
        let mut emitted: Vec<(i64, Vec<NewEvent>)> = Vec::new();
        for (_, event) in batch {
            if handled.contains(&event.position) {
                outcomes.push(Outcome::Done); // a redelivery: acknowledge only
                continue;
            }
            sqlx::query("SAVEPOINT event").execute(&mut *tx).await?;
            let mut ctx = Context::new(&mut tx, manifest, event);
            match run_handler(agent, &mut ctx, event).await {
                Ok(()) => {
                    emitted.push((event.position, ctx.into_emitted()));
                    sqlx::query("RELEASE SAVEPOINT event")
                        .execute(&mut *tx)
                        .await?;
                    outcomes.push(Outcome::Done);
                }
                Err(e) => {
                    sqlx::query("ROLLBACK TO SAVEPOINT event")
                        .execute(&mut *tx)
                        .await?;
                    outcomes.push(Outcome::Failed(e));
                }
            }
        }
        if emitted.is_empty() {
            tx.commit().await?;
            return Ok(outcomes);
        }

        // The writes. Another instance may have handled some of these meanwhile: the records
        // this transaction wins say whose effects are appended.
        // In ascending order, so that two batches sharing events take their rows in one order.
        let mut mine: Vec<i64> = emitted.iter().map(|(p, _)| *p).collect();
        mine.sort_unstable();
        let won: Vec<i64> = sqlx::query_scalar(
            "INSERT INTO agent_handled (agent, event_position) SELECT $1, unnest($2::int8[])
             ON CONFLICT DO NOTHING RETURNING event_position",
        )
        .bind(&manifest.name)
        .bind(&mine)
        .fetch_all(&mut *tx)
        .await?;
        let events: Vec<NewEvent> = emitted
            .into_iter()
            .filter(|(p, _)| won.contains(p))
            .flat_map(|(_, events)| events)
            .collect();
        if !events.is_empty() {
            match self.store.append_in(&mut tx, events).await {
                Ok(_) => {}
                Err(e) => {
                    // A race for a stream version, or an event the store refused: nothing of
                    // the batch is written; each handled event is run again on its own.
                    drop(tx);
                    tracing::debug!(error = %e, "batch append failed; handling its events one by one");
                    return Ok(outcomes
                        .into_iter()
                        .map(|o| match o {
                            Outcome::Done => Outcome::Race,
                            other => other,
                        })
                        .collect());
                }
            }
        }
        tx.commit().await?;
        Ok(outcomes)
    }

    fn work_context(
        &self,
        agent: &Arc<dyn Agent>,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> WorkContext {
        WorkContext {
            store: self.store.clone(),
            manifest: agent.manifest().clone(),
            cause: event.clone(),
            shutdown: shutdown.child_token(),
        }
    }

    /// A long-running agent's delivery: skip it if handled, else do the work while telling
    /// JetStream it is in progress, then handle it with the work's result.
    async fn work_then_handle(
        &self,
        agent: &Arc<dyn Agent>,
        message: &jetstream::Message,
        event: &RecordedEvent,
        shutdown: &CancellationToken,
    ) -> Outcome {
        let handled: Result<bool, sqlx::Error> = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent_handled WHERE agent = $1 AND event_position = $2)",
        )
        .bind(&agent.manifest().name)
        .bind(event.position)
        .fetch_one(self.store.pool())
        .await;
        match handled {
            Ok(true) => return Outcome::Done,
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot check the handled record; redelivering");
                return Outcome::Retry;
            }
        }
        // Aborted when the work ends, and also when this future is dropped half-way (at
        // shutdown): a keep-alive outliving its work would hold the delivery forever.
        let keep_alive = {
            let message = message.clone();
            let every = Duration::from_millis((self.config.ack_wait_secs * 1000 / 3).max(100));
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    if message.ack_with(AckKind::Progress).await.is_err() {
                        tracing::debug!("cannot tell JetStream the work is in progress");
                    }
                }
            }))
        };
        let context = self.work_context(agent, event, shutdown);
        let started = std::time::Instant::now();
        let span = tracing::info_span!(
            "agent.work",
            agent.name = %agent.manifest().name,
            event.id = %event.id,
            event.r#type = %event.ty,
            correlation.id = %event.correlation_id,
            hop.count = agent::hop_count(event),
        );
        switchyard_telemetry::continue_from(&span, event.traceparent.as_deref());
        let output = agent.work(&context, event).instrument(span).await;
        drop(keep_alive);
        switchyard_telemetry::metrics()
            .handle_time(&agent.manifest().name, started.elapsed().as_secs_f64());
        match output {
            Ok(output) => match self.handle(agent, event, Some(output)).await {
                Ok(()) => Outcome::Done,
                Err(e) => Outcome::Failed(e),
            },
            Err(e) => Outcome::Failed(e),
        }
    }

    fn backoff(&self, delivered: i64) -> Duration {
        let exponent = u32::try_from(delivered.clamp(1, 20) - 1).unwrap_or(0);
        let ms = self.config.backoff_base_ms.saturating_mul(1u64 << exponent);
        Duration::from_millis(ms.min(self.config.backoff_max_ms))
    }

    /// Runs the handler in a transaction with the "handled" record. `Ok` also when the event
    /// was handled before (a redelivery). A race with a concurrent writer of the same stream is
    /// not the handler's failure: the whole transaction runs again (a few times, with jitter)
    /// before it counts as a failed delivery.
    async fn handle(
        &self,
        agent: &Arc<dyn Agent>,
        event: &RecordedEvent,
        work: Option<Value>,
    ) -> Result<(), HandlerError> {
        const ATTEMPTS: u64 = 8;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.try_handle(agent, event, work.clone()).await {
                Err(Failure::Race) if attempt < ATTEMPTS => {
                    let jitter = u64::from(uuid::Uuid::new_v4().as_bytes()[0]) % 20;
                    tokio::time::sleep(Duration::from_millis(attempt * 5 + jitter)).await;
                }
                Err(Failure::Race) => {
                    return Err(HandlerError::new(
                        "lost the race for a stream version too often; will retry",
                    ));
                }
                Err(Failure::Handler(e)) => return Err(e),
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn try_handle(
        &self,
        agent: &Arc<dyn Agent>,
        event: &RecordedEvent,
        work: Option<Value>,
    ) -> Result<(), Failure> {
        let manifest = agent.manifest();
        let mut conn = self
            .store
            .pool()
            .acquire()
            .await
            .map_err(HandlerError::from)?;
        let mut tx = conn.begin().await.map_err(HandlerError::from)?;
        let handled: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM agent_handled WHERE agent = $1 AND event_position = $2)",
        )
        .bind(&manifest.name)
        .bind(event.position)
        .fetch_one(&mut *tx)
        .await
        .map_err(HandlerError::from)?;
        if handled {
            return Ok(());
        }
        // The handler first, the "handled" record after it, as in a batch: the handler's own
        // locks (an artifact's) are then always taken before the record's row. In the other
        // order, this transaction and a batch handling a redelivery of the same event (after
        // its ack wait) each held what the other waited for: a deadlock.
        let mut ctx = Context::new(&mut tx, manifest, event).with_work(work);
        run_handler(agent, &mut ctx, event).await?;
        let emitted = ctx.into_emitted();
        let won = sqlx::query(
            "INSERT INTO agent_handled (agent, event_position) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        )
        .bind(&manifest.name)
        .bind(event.position)
        .execute(&mut *tx)
        .await
        .map_err(HandlerError::from)?
        .rows_affected()
            == 1;
        if !won {
            // Handled elsewhere meanwhile: its effects are there, these are dropped.
            return Ok(());
        }
        if !emitted.is_empty() {
            match self.store.append_in(&mut tx, emitted).await {
                Ok(_) => {}
                // Another writer moved a stream the handler decided on (an exact expected
                // version): decide again on what is there now.
                Err(
                    switchyard_store::Error::ConcurrentWrite
                    | switchyard_store::Error::Conflict { .. },
                ) => return Err(Failure::Race),
                Err(e) => {
                    return Err(
                        HandlerError::new(format!("appending the agent's events: {e}")).into(),
                    );
                }
            }
        }
        tx.commit().await.map_err(HandlerError::from)?;
        Ok(())
    }

    /// Dead-letters an event; a race for the agent's stream version (two letters at once) is
    /// retried, not lost.
    async fn dead_letter(
        &self,
        agent: &str,
        event: &RecordedEvent,
        delivered: i64,
        failure: &HandlerError,
    ) -> Result<()> {
        let mut attempt = 0u64;
        loop {
            match self.try_dead_letter(agent, event, delivered, failure).await {
                Err(Error::Store(switchyard_store::Error::ConcurrentWrite)) if attempt < 8 => {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(attempt * 5)).await;
                }
                other => return other,
            }
        }
    }

    async fn try_dead_letter(
        &self,
        agent: &str,
        event: &RecordedEvent,
        delivered: i64,
        failure: &HandlerError,
    ) -> Result<()> {
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        sqlx::query(
            "INSERT INTO dead_letters (id, agent, event_position, workspace, event_id, event_type, deliveries, error)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
             ON CONFLICT (agent, event_position) DO UPDATE SET
                 deliveries = dead_letters.deliveries + $7, error = $8, failed_at = now(), resolved_at = NULL",
        )
        .bind(uuid::Uuid::now_v7())
        .bind(agent)
        .bind(event.position)
        .bind(event.workspace.as_str())
        .bind(event.id.as_str())
        .bind(event.ty.as_str())
        .bind(i32::try_from(delivered).unwrap_or(i32::MAX))
        .bind(&failure.0)
        .execute(&mut *tx)
        .await?;
        let mut failed = NewEvent::new(
            event.workspace.clone(),
            Source::parse(&format!("/agents/{agent}")).map_err(js)?,
            EventType::parse("agent.failed.v1").map_err(js)?,
            StreamId::parse(&format!("agent/{agent}")).map_err(js)?,
            json!({
                "agent": agent,
                "event_id": event.id,
                "event_type": event.ty,
                "event_sequence": event.position,
                "deliveries": delivered.max(1),
                "error": failure.0.chars().take(2000).collect::<String>(),
            }),
        );
        failed.correlation_id = Some(event.correlation_id.clone());
        failed.causation_id = Some(event.id.to_string());
        self.store.append_in(&mut tx, vec![failed]).await?;
        tx.commit().await?;
        tracing::error!(agent, event.id = %event.id, delivered, error = %failure, "event dead-lettered");
        Ok(())
    }

    /// The dead-letter list, newest first.
    pub async fn dead_letters(&self, unresolved_only: bool) -> Result<Vec<DeadLetter>> {
        Ok(sqlx::query_as(
            "SELECT id, agent, event_position, workspace, event_id, event_type, deliveries, error, failed_at, resolved_at
             FROM dead_letters WHERE NOT $1 OR resolved_at IS NULL ORDER BY failed_at DESC LIMIT 1000",
        )
        .bind(unresolved_only)
        .fetch_all(self.store.pool())
        .await?)
    }

    /// Runs the agent's handler again for a dead-lettered event (after a fix). On success the
    /// event counts as handled (once) and the dead letter is resolved.
    pub async fn retry_dead_letter(&self, id: uuid::Uuid) -> Result<DeadLetter> {
        let letter: DeadLetter = sqlx::query_as(
            "SELECT id, agent, event_position, workspace, event_id, event_type, deliveries, error, failed_at, resolved_at
             FROM dead_letters WHERE id = $1 AND resolved_at IS NULL",
        )
        .bind(id)
        .fetch_optional(self.store.pool())
        .await?
        .ok_or(Error::NoDeadLetter(id))?;
        let agent = self
            .agents
            .iter()
            .find(|a| a.manifest().name == letter.agent)
            .ok_or_else(|| Error::UnknownAgent(letter.agent.clone()))?;
        let event = self
            .store
            .get(letter.event_position)
            .await?
            .ok_or(Error::NoDeadLetter(id))?;
        let work = if agent.long_running() {
            let context = self.work_context(agent, &event, &CancellationToken::new());
            Some(
                agent
                    .work(&context, &event)
                    .await
                    .map_err(Error::StillFailing)?,
            )
        } else {
            None
        };
        self.handle(agent, &event, work)
            .await
            .map_err(Error::StillFailing)?;
        let resolved: DeadLetter = sqlx::query_as(
            "UPDATE dead_letters SET resolved_at = now() WHERE id = $1
             RETURNING id, agent, event_position, workspace, event_id, event_type, deliveries, error, failed_at, resolved_at",
        )
        .bind(id)
        .fetch_one(self.store.pool())
        .await?;
        Ok(resolved)
    }

    /// Every consumer's state.
    pub async fn status(&self) -> Result<Vec<ConsumerStatus>> {
        // One stream lookup, then every consumer's info at once: one round trip's latency
        // for all of them rather than three per consumer, one after the other.
        let stream = self.jetstream.get_stream(&self.stream).await.ok();
        let mut out = Vec::new();
        for agent in &self.agents {
            let name = &agent.manifest().name;
            // The newest handled row by the primary key, backwards: one index entry, however
            // many events the agent handled (`max(handled_at)` read them all).
            let last_handled: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
                "SELECT handled_at FROM agent_handled WHERE agent = $1
                 ORDER BY event_position DESC LIMIT 1",
            )
            .bind(name)
            .fetch_optional(self.store.pool())
            .await?;
            let infos = futures::future::join_all(agent.manifest().subscribes.iter().map(|ty| {
                let consumer = consumer_name(name, ty);
                let stream = stream.as_ref();
                async move {
                    let figures = match stream {
                        Some(stream) => match stream.consumer_info(&consumer).await {
                            Ok(info) => {
                                (info.num_pending, info.num_ack_pending, info.num_redelivered)
                            }
                            Err(_) => (0, 0, 0),
                        },
                        None => (0, 0, 0),
                    };
                    (ty, consumer, figures)
                }
            }))
            .await;
            for (ty, consumer, (pending, ack_pending, redelivered)) in infos {
                out.push(ConsumerStatus {
                    agent: name.clone(),
                    event_type: ty.to_string(),
                    consumer,
                    pending,
                    ack_pending,
                    redelivered,
                    last_handled,
                });
            }
        }
        Ok(out)
    }
}
