//! The PostgreSQL event store: the single source of truth of Switchyard.
//!
//! It owns these invariants:
//! - **one path in**: every event is validated against the catalog, then appended in one
//!   transaction ([`EventStore::append`], or [`EventStore::append_in`] inside a caller's
//!   transaction); the table refuses UPDATE, DELETE and TRUNCATE itself;
//! - **optimistic concurrency**: each event may state the stream version it expects, and a
//!   mismatch is a typed [`Error::Conflict`];
//! - **lifetime idempotency**: `(workspace, source, id)` is unique; appending it again
//!   appends nothing and returns the original position, also when two appends race;
//! - **gap-free global order**: [`EventStore::read_all`] returns events ordered by
//!   `(transaction_id, position)` and only from transactions older than the oldest one still
//!   running (`pg_snapshot_xmin`), so a reader following the cursor never skips an event that
//!   commits late, without timeouts or writer locks.
//!
//! Concurrent appends share commits (group commit): see [`StoreConfig::writers`].

mod append;
mod error;
mod group;
mod read;

use std::sync::Arc;

use serde::Deserialize;
use sqlx::{PgConnection, PgPool, postgres::PgPoolOptions};
use switchyard_events::{Catalog, EventType, NewEvent};
use tokio::sync::{Mutex, mpsc, oneshot};

pub use append::Appended;
pub use error::{Error, Result};
pub use read::{
    Counted, Page, ReadFilter, Scanned, TIMELINE_WINDOW, TimelineFilter, TimelinePage, Wakeups,
    ordered_scans_only,
};

/// The schema migrations of the store (and of every table Switchyard owns).
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../../migrations");

/// Tuning of the event store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Writer tasks that commit queued appends, each on its own connection. One (the default)
    /// makes the biggest groups: on the bench machine (2 cores shared with PostgreSQL) it beat
    /// two by 1.03-1.18x against 0.86-0.95x raw. More can help when commits wait on a slow
    /// disk rather than on CPU.
    pub writers: usize,
    /// Most events one group commit takes from the queue.
    pub max_group_events: usize,
    /// Most events one append (one HTTP batch) may hold.
    pub max_batch_events: usize,
    /// Appends that may wait in the queue before callers wait to enqueue.
    pub queue_depth: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            writers: 1,
            max_group_events: 2_000,
            max_batch_events: 1_000,
            queue_depth: 4_096,
        }
    }
}

/// A pooled connection idle this long is pinged before it is handed out.
pub const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

/// Pool options for the store's pool. sqlx pings every connection it hands out by default:
/// a round trip per acquire, which the append bench's profile put at a sixth of the server's
/// time. A connection in steady use has just proven itself; only one that sat idle for
/// [`PING_IF_IDLE_FOR`] is pinged (a dead one is then replaced rather than handed out).
pub fn pool_options() -> PgPoolOptions {
    use sqlx::Connection as _;
    PgPoolOptions::new()
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
}

/// Handle to the event store; cheap to clone.
#[derive(Debug, Clone)]
pub struct EventStore {
    pool: PgPool,
    catalog: Arc<Catalog>,
    queue: mpsc::Sender<group::Job>,
    max_batch_events: usize,
}

impl EventStore {
    /// A store over `pool` (already migrated), validating with `catalog`. Spawns the group
    /// commit writers on the current Tokio runtime; they stop when the last handle is dropped.
    pub fn new(pool: PgPool, catalog: Arc<Catalog>, config: &StoreConfig) -> Self {
        let (tx, rx) = mpsc::channel(config.queue_depth.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..config.writers.max(1) {
            tokio::spawn(group::run_writer(
                pool.clone(),
                Arc::clone(&rx),
                config.max_group_events.max(1),
            ));
        }
        Self {
            pool,
            catalog,
            queue: tx,
            max_batch_events: config.max_batch_events,
        }
    }

    /// The connection pool, for health checks and for callers that run their own transaction
    /// around [`EventStore::append_in`].
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The catalog events are validated against.
    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    /// Appends a batch atomically: every new event is written or none is. Events whose
    /// `(workspace, source, id)` is already stored are reported as duplicates (with the
    /// original position) and written again never. Concurrent calls share commits.
    #[tracing::instrument(name = "store.append", skip_all, fields(events = events.len()))]
    pub async fn append(&self, mut events: Vec<NewEvent>) -> Result<Vec<Appended>> {
        stamp_trace(&mut events);
        append::validate(&self.catalog, &events, self.max_batch_events)?;
        let types: Vec<EventType> = events.iter().map(|e| e.ty.clone()).collect();
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(group::Job { events, reply })
            .await
            .map_err(|_| Error::Closed)?;
        let appended = answer.await.map_err(|_| Error::Closed)??;
        count(&types, &appended);
        Ok(appended)
    }

    /// Appends a batch inside the caller's transaction, so that the events commit together
    /// with the caller's own writes (an agent's "handled" record, a projection's checkpoint).
    ///
    /// On [`Error::ConcurrentWrite`] the transaction is aborted: roll it back and retry.
    #[tracing::instrument(name = "store.append", skip_all, fields(events = events.len(), in_transaction = true))]
    pub async fn append_in(
        &self,
        conn: &mut PgConnection,
        mut events: Vec<NewEvent>,
    ) -> Result<Vec<Appended>> {
        stamp_trace(&mut events);
        append::validate(&self.catalog, &events, self.max_batch_events)?;
        let types: Vec<EventType> = events.iter().map(|e| e.ty.clone()).collect();
        let written = append::write(conn, &[events.as_slice()], append::Lookup::Full)
            .await
            .map_err(|e| {
                if error::is_append_race(&e) {
                    Error::ConcurrentWrite
                } else {
                    Error::from(e)
                }
            })?;
        match written {
            // Counted before the caller's commit: a rolled-back transaction over-counts.
            append::Written::Done(mut results) => {
                let appended = results.pop().unwrap_or(Err(Error::Closed))?;
                count(&types, &appended);
                Ok(appended)
            }
            // A full lookup never asks for another.
            append::Written::NeedsFullLookup => Err(Error::ConcurrentWrite),
        }
    }
}

/// Counts the appended events (not the duplicates) in the process's metrics.
fn count(types: &[EventType], appended: &[Appended]) {
    for (ty, appended) in types.iter().zip(appended) {
        if !appended.duplicate {
            switchyard_telemetry::metrics().appended(ty.as_str());
        }
    }
}

/// An event that carries no trace context continues the trace of the append (the current
/// span), so that whoever handles it continues that trace.
fn stamp_trace(events: &mut [NewEvent]) {
    if let Some(traceparent) = switchyard_telemetry::current_traceparent() {
        for event in events.iter_mut().filter(|e| e.traceparent.is_none()) {
            event.traceparent = Some(traceparent.clone());
        }
    }
}
