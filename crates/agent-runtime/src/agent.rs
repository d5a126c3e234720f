//! What an agent is: a manifest and a handler, and the context a handler works in.

use futures::future::BoxFuture;
use serde::Serialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use sqlx::PgConnection;
use switchyard_events::{EventId, EventType, NewEvent, RecordedEvent, Source, StreamId};

use crate::messages::{MESSAGE_ACKNOWLEDGED, MESSAGE_SENT, Message, inbox, wait_for_inbox};

/// The event type that `remember` records.
pub const MEMORY_RECORDED: &str = "agent.memory.recorded.v1";

/// What an agent declares about itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Manifest {
    /// Unique name: `a-z`, `0-9`, `-`, `_`; also its `source` (`/agents/<name>`).
    pub name: String,
    /// Its version; a new version re-registers.
    pub version: String,
    /// Capability tags.
    pub capabilities: Vec<String>,
    /// The event types it handles: one durable consumer each.
    pub subscribes: Vec<EventType>,
    /// The event types it may emit (`agent.memory.recorded.v1` is always allowed, through
    /// `remember`).
    pub emits: Vec<EventType>,
    /// The artifacts it produces (names from `config/artifacts.yaml`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub produces: Vec<String>,
    /// The artifacts it consumes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub consumes: Vec<String>,
}

impl Manifest {
    /// SHA-256 of the manifest's JSON: registration happens again only when it changes.
    pub fn hash(&self) -> String {
        let bytes = serde_json::to_vec(self).unwrap_or_default();
        Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    /// The data of its `agent.registered.v1` event.
    pub fn registration(&self) -> Value {
        let mut data = json!({
            "name": self.name,
            "version": self.version,
            "capabilities": self.capabilities,
            "subscribes": self.subscribes,
            "emits": self.emits,
            "manifest_hash": self.hash(),
        });
        if !self.produces.is_empty() {
            data["produces"] = json!(self.produces);
        }
        if !self.consumes.is_empty() {
            data["consumes"] = json!(self.consumes);
        }
        data
    }
}

/// A handler's failure. The event is delivered again with backoff, and dead-lettered after
/// the consumer's `max_deliver` deliveries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct HandlerError(pub String);

impl HandlerError {
    /// A failure with a message for the dead-letter list.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<sqlx::Error> for HandlerError {
    fn from(e: sqlx::Error) -> Self {
        Self(format!("database: {e}"))
    }
}

/// An agent: handles events of the types it subscribes to, inside one transaction.
pub trait Agent: Send + Sync + 'static {
    /// Its manifest.
    fn manifest(&self) -> &Manifest;

    /// Whether the agent does long work ([`work`](Self::work)) for each event. Such an agent's
    /// deliveries are handled one at a time per consumer slot, outside batches.
    fn long_running(&self) -> bool {
        false
    }

    /// Long work done before [`handle`](Self::handle), outside any transaction (a runner's
    /// commands). While it runs the runtime tells JetStream the delivery is in progress, so it
    /// is delivered again only if this process dies or the work fails; an event already
    /// handled is never worked on again. The result reaches `handle` as
    /// [`Context::work_output`]. Called only when [`long_running`](Self::long_running).
    fn work<'a>(
        &'a self,
        _work: &'a WorkContext,
        _event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Value, HandlerError>> {
        Box::pin(async { Ok(Value::Null) })
    }

    /// Handles one event. What it emits (through `ctx`) commits together with the record that
    /// it handled the event, or not at all. It may run again for the same event only if it
    /// failed before, so it must not act outside the transaction without making that
    /// idempotent itself.
    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>>;
}

/// What long work may do: publish an event at once (e.g. "started"), read the store, and
/// notice that the server is shutting down.
#[derive(Debug, Clone)]
pub struct WorkContext {
    pub(crate) store: switchyard_store::EventStore,
    pub(crate) manifest: Manifest,
    pub(crate) cause: RecordedEvent,
    pub(crate) shutdown: tokio_util::sync::CancellationToken,
}

impl WorkContext {
    /// Appends an event now, in its own transaction, caused by the event being worked on (as
    /// [`Context::emit`] builds it). Only types the manifest declares.
    pub async fn emit_now(&self, ty: &str, stream: &str, data: Value) -> Result<(), HandlerError> {
        let event = build(&self.manifest, &self.cause, ty, stream, data)?;
        self.store
            .append(vec![event])
            .await
            .map_err(|e| HandlerError::new(format!("appending {ty}: {e}")))?;
        Ok(())
    }

    /// Takes the messages waiting for this agent in the event's workspace (at most 100) for
    /// this step, `used_in` naming it: each is acknowledged now, with an id derived from the
    /// message and the agent, so that of two steps running at once only one gets it — the
    /// store's idempotency decides — and a retry of the same step (same `used_in`) gets it
    /// again.
    pub async fn claim_inbox(&self, used_in: &str) -> Result<Vec<Message>, HandlerError> {
        {
            let mut conn = self.store.pool().acquire().await?;
            wait_for_inbox(&mut conn, self.cause.cursor).await?;
        }
        let waiting = inbox(
            self.store.pool(),
            self.cause.workspace.as_str(),
            &self.manifest.name,
            100,
        )
        .await?;
        let mut claimed = Vec::with_capacity(waiting.len());
        for message in waiting {
            let ack = acknowledgement(&self.manifest, &self.cause, &message.message_id, used_in)?;
            let appended = self
                .store
                .append(vec![ack])
                .await
                .map_err(|e| HandlerError::new(format!("acknowledging a message: {e}")))?;
            let mine = match appended.first() {
                Some(a) if a.duplicate => {
                    let by: Option<String> =
                        sqlx::query_scalar("SELECT data->>'in' FROM events WHERE position = $1")
                            .bind(a.position)
                            .fetch_optional(self.store.pool())
                            .await?;
                    by.as_deref() == Some(used_in)
                }
                Some(_) => true,
                None => false,
            };
            if mine {
                claimed.push(message);
            }
        }
        Ok(claimed)
    }

    /// The store's pool, for reads.
    pub fn pool(&self) -> &sqlx::PgPool {
        self.store.pool()
    }

    /// Cancelled when the server shuts down: stop, and the event is delivered again later.
    pub fn shutdown(&self) -> &tokio_util::sync::CancellationToken {
        &self.shutdown
    }
}

/// How many agents' hops an event is from its origin (the `hopcount` extension; 0 for an
/// event from the API, a webhook or the scheduler).
pub(crate) fn hop_count(event: &RecordedEvent) -> u64 {
    event
        .extensions
        .get("hopcount")
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// The span an agent handles an event in: it continues the trace of the span that wrote the
/// event (its `traceparent`), with a link to it, the cause.
pub(crate) fn handle_span(agent: &str, event: &RecordedEvent) -> tracing::Span {
    let span = tracing::info_span!(
        "agent.handle",
        agent.name = agent,
        event.id = %event.id,
        event.r#type = %event.ty,
        correlation.id = %event.correlation_id,
        hop.count = hop_count(event),
    );
    switchyard_telemetry::continue_from(&span, event.traceparent.as_deref());
    span
}

/// Types every agent may emit without declaring them: memory and messages.
fn always_allowed(ty: &str) -> bool {
    ty == MEMORY_RECORDED || ty == MESSAGE_SENT || ty == MESSAGE_ACKNOWLEDGED
}

/// `agent.message.acknowledged.v1` of `message_id` by the manifest's agent: one per agent and
/// message, whoever appends it first.
fn acknowledgement(
    manifest: &Manifest,
    cause: &RecordedEvent,
    message_id: &str,
    used_in: &str,
) -> Result<NewEvent, HandlerError> {
    let data = json!({"message_id": message_id, "agent": manifest.name, "in": used_in});
    let mut event = build(
        manifest,
        cause,
        MESSAGE_ACKNOWLEDGED,
        &format!("message/{message_id}"),
        data,
    )?;
    event.id = EventId::parse(&format!("ack:{message_id}:{}", manifest.name))
        .map_err(|e| HandlerError::new(e.to_string()))?;
    Ok(event)
}

fn build(
    manifest: &Manifest,
    cause: &RecordedEvent,
    ty: &str,
    stream: &str,
    data: Value,
) -> Result<NewEvent, HandlerError> {
    let ty = EventType::parse(ty).map_err(|e| HandlerError::new(e.to_string()))?;
    if !always_allowed(ty.as_str()) && !manifest.emits.contains(&ty) {
        return Err(HandlerError::new(format!(
            "agent {} may not emit {ty}: its manifest does not declare it",
            manifest.name
        )));
    }
    let stream = StreamId::parse(stream).map_err(|e| HandlerError::new(e.to_string()))?;
    let source = Source::parse(&format!("/agents/{}", manifest.name))
        .map_err(|e| HandlerError::new(e.to_string()))?;
    let mut event = NewEvent::new(cause.workspace.clone(), source, ty, stream, data);
    event.correlation_id = Some(cause.correlation_id.clone());
    event.causation_id = Some(cause.id.to_string());
    // The trace goes on from the span handling the cause (else the cause's own context).
    event.traceparent =
        switchyard_telemetry::current_traceparent().or_else(|| cause.traceparent.clone());
    event
        .extensions
        .insert("hopcount".into(), serde_json::json!(hop_count(cause) + 1));
    Ok(event)
}

/// What a handler may do: emit events, remember and recall, read through the transaction.
#[derive(Debug)]
pub struct Context<'t> {
    tx: &'t mut PgConnection,
    manifest: &'t Manifest,
    cause: &'t RecordedEvent,
    emitted: Vec<NewEvent>,
    work: Option<Value>,
}

impl<'t> Context<'t> {
    pub(crate) fn new(
        tx: &'t mut PgConnection,
        manifest: &'t Manifest,
        cause: &'t RecordedEvent,
    ) -> Self {
        Self {
            tx,
            manifest,
            cause,
            emitted: Vec::new(),
            work: None,
        }
    }

    pub(crate) fn with_work(mut self, work: Option<Value>) -> Self {
        self.work = work;
        self
    }

    /// What [`Agent::work`] returned for this event (long-running agents only).
    pub fn work_output(&self) -> Option<&Value> {
        self.work.as_ref()
    }

    pub(crate) fn into_emitted(self) -> Vec<NewEvent> {
        self.emitted
    }

    /// The event being handled.
    pub fn cause(&self) -> &RecordedEvent {
        self.cause
    }

    /// The manifest of the agent handling the event.
    pub fn manifest(&self) -> &Manifest {
        self.manifest
    }

    /// The transaction the handler runs in, for reading (projections, the store).
    pub fn connection(&mut self) -> &mut PgConnection {
        self.tx
    }

    /// Emits an event caused by the one being handled: same workspace, `causationid` = the
    /// handled event, `correlationid` carried on, `source` = `/agents/<name>`. Only types the
    /// manifest declares may be emitted.
    pub fn emit(&mut self, ty: &str, stream: &str, data: Value) -> Result<(), HandlerError> {
        let event = build(self.manifest, self.cause, ty, stream, data)?;
        self.emitted.push(event);
        Ok(())
    }

    /// Emits an event built elsewhere (e.g. a decision from
    /// `switchyard_proposals::decide`), keeping its id, stream, expected version and
    /// correlation. As with [`emit`](Self::emit), the type must be declared, the workspace and
    /// `source` are the handler's, and the handled event is the cause.
    pub fn emit_event(&mut self, mut event: NewEvent) -> Result<(), HandlerError> {
        if !always_allowed(event.ty.as_str()) && !self.manifest.emits.contains(&event.ty) {
            return Err(HandlerError::new(format!(
                "agent {} may not emit {}: its manifest does not declare it",
                self.manifest.name, event.ty
            )));
        }
        event.workspace = self.cause.workspace.clone();
        event.source = Source::parse(&format!("/agents/{}", self.manifest.name))
            .map_err(|e| HandlerError::new(e.to_string()))?;
        event.correlation_id = event
            .correlation_id
            .or_else(|| Some(self.cause.correlation_id.clone()));
        event.causation_id = Some(self.cause.id.to_string());
        event.traceparent =
            switchyard_telemetry::current_traceparent().or_else(|| self.cause.traceparent.clone());
        event
            .extensions
            .insert("hopcount".into(), json!(hop_count(self.cause) + 1));
        self.emitted.push(event);
        Ok(())
    }

    /// The messages waiting for this agent in the handled event's workspace (at most 100),
    /// oldest first.
    pub async fn inbox(&mut self) -> Result<Vec<Message>, HandlerError> {
        wait_for_inbox(&mut *self.tx, self.cause.cursor).await?;
        Ok(inbox(
            &mut *self.tx,
            self.cause.workspace.as_str(),
            &self.manifest.name,
            100,
        )
        .await?)
    }

    /// Acknowledges a message (once per agent: the event's id is derived from both), noting
    /// where it was used.
    pub fn acknowledge(&mut self, message_id: &str, used_in: &str) -> Result<(), HandlerError> {
        let event = acknowledgement(self.manifest, self.cause, message_id, used_in)?;
        self.emitted.push(event);
        Ok(())
    }

    /// Sends a message to `recipient` (an agent's name, or `*` for every agent); returns its
    /// id.
    pub fn send_message(
        &mut self,
        recipient: &str,
        kind: &str,
        content: Value,
        reply_to: Option<&str>,
    ) -> Result<String, HandlerError> {
        let message_id = uuid::Uuid::now_v7().to_string();
        let mut data = json!({
            "message_id": message_id, "sender": self.manifest.name, "recipient": recipient,
            "type": kind, "content": content,
        });
        if let Some(reply_to) = reply_to {
            data["reply_to"] = json!(reply_to);
        }
        let event = build(
            self.manifest,
            self.cause,
            MESSAGE_SENT,
            &format!("message/{message_id}"),
            data,
        )?;
        self.emitted.push(event);
        Ok(message_id)
    }

    /// One stream per remembered key, `agent/<name>/memory/<key>` (the key's SHA-256 when it
    /// is not a valid stream id), so that concurrent handlers remembering different keys never
    /// contend for a stream version, and recall reads one short stream.
    fn memory_stream(&self, key: &str) -> String {
        let stream = format!("agent/{}/memory/{key}", self.manifest.name);
        if StreamId::parse(&stream).is_ok() {
            stream
        } else {
            let digest: String = Sha256::digest(key.as_bytes())
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("agent/{}/memory/sha256-{digest}", self.manifest.name)
        }
    }

    /// Remembers `value` under `key`, in the handled event's workspace (an
    /// `agent.memory.recorded.v1` event, committed with the rest).
    pub fn remember(&mut self, key: &str, value: Value) -> Result<(), HandlerError> {
        let stream = self.memory_stream(key);
        let data = json!({"agent": self.manifest.name, "key": key, "value": value});
        self.emit(MEMORY_RECORDED, &stream, data)
    }

    /// The last value remembered under `key` in this workspace, including what this handler
    /// remembered so far. Read from the store itself, so it never lags.
    pub async fn recall(&mut self, key: &str) -> Result<Option<Value>, HandlerError> {
        let pending = self.emitted.iter().rev().find(|e| {
            e.ty.as_str() == MEMORY_RECORDED
                && e.data.get("key").and_then(Value::as_str) == Some(key)
        });
        if let Some(event) = pending {
            return Ok(event.data.get("value").cloned());
        }
        let stream = self.memory_stream(key);
        let value: Option<Value> = sqlx::query_scalar(
            "SELECT data->'value' FROM events
             WHERE workspace = $1 AND stream_id = $2 AND type = $3
             ORDER BY stream_version DESC LIMIT 1",
        )
        .bind(self.cause.workspace.as_str())
        .bind(stream)
        .bind(MEMORY_RECORDED)
        .fetch_optional(&mut *self.tx)
        .await?;
        Ok(value)
    }
}
