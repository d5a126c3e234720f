//! Projections: read models built from the event store in global order.
//!
//! Invariants this crate owns:
//! - a projection's tables and its checkpoint change in **one transaction**, so a crash never
//!   applies an event twice or skips one;
//! - only the projection writes its tables: they live in a schema of its own,
//!   `proj_<name>`, and its `apply` runs with `search_path` set to that schema;
//! - a projection can be **rebuilt from position 0 without going offline**: the new tables are
//!   built beside the old ones (schema `proj_<name>__next`) and swapped in by renaming schemas
//!   in one transaction, under the same lock the live runner takes per batch;
//! - several server instances may run the same projection: an advisory lock per batch and a
//!   re-check of the checkpoint under it make them take turns, never apply twice.

mod agent_state;
mod retrospectives;

use std::{sync::Arc, time::Duration};

use futures::future::BoxFuture;
use serde::Serialize;
use sqlx::{Connection, PgConnection};
use switchyard_events::{Cursor, RecordedEvent};
use switchyard_store::{EventStore, ReadFilter, Scanned, Wakeups};
use tokio_util::sync::CancellationToken;

pub use agent_state::AgentState;
pub use retrospectives::Retrospectives;

/// Result of the projection runner.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can stop a projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// PostgreSQL failed, or a projection's SQL did.
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    /// Reading the store failed.
    #[error("event store: {0}")]
    Store(#[from] switchyard_store::Error),
    /// No projection has this name.
    #[error("no projection named {0:?}")]
    Unknown(String),
}

/// A read model. `apply` runs inside the runner's transaction, with `search_path` set to the
/// projection's own schema, so its SQL names its tables without a schema.
pub trait Projection: Send + Sync + 'static {
    /// Lowercase letters, digits and `_`; names the schema `proj_<name>`.
    fn name(&self) -> &'static str;

    /// Creates the projection's tables (run in an empty schema, with `search_path` set to it).
    fn schema(&self) -> &'static str;

    /// The only event types [`apply`](Self::apply) does anything with, when it depends on the
    /// type alone: the runner then reads only these from the store. `None` (the default): it
    /// is handed every event.
    fn types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// With [`types`](Self::types): events from sources starting with this are handed over
    /// too, whatever their type (`agent_state` counts every agent's events as its activity).
    fn or_source_prefix(&self) -> Option<&'static str> {
        None
    }

    /// Applies one event. Events of types the projection ignores must be ignored.
    fn apply<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), sqlx::Error>>;

    /// Applies a page of events, in order, in one transaction: [`apply`](Self::apply) on each
    /// unless the projection can do it in fewer statements with the same outcome.
    fn apply_page<'a>(
        &'a self,
        tx: &'a mut PgConnection,
        events: &'a [RecordedEvent],
    ) -> BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            for event in events {
                self.apply(&mut *tx, event).await?;
            }
            Ok(())
        })
    }
}

/// Where a projection stands.
#[derive(Debug, Clone, Serialize)]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// Its checkpoint.
    pub cursor: String,
    /// Events applied since it was (re)built.
    pub applied: i64,
    /// Visible events not applied yet (counted up to a cap).
    pub lag_events: i64,
}

/// What one step of a projection did.
struct Advanced {
    /// Events read and applied.
    read: usize,
    /// The checkpoint moved (past applied events, or past events the projection skips).
    moved: bool,
    /// An older open transaction holds back committed events.
    held_back: bool,
}

/// Runs projections: follows the store, applies, checkpoints, rebuilds.
#[derive(Clone)]
pub struct ProjectionRunner {
    store: EventStore,
    projections: Vec<Arc<dyn Projection>>,
    batch: u32,
    /// Events per page of a rebuild.
    rebuild_batch: u32,
    /// After a page shorter than `batch`, how long to let events gather before the next read.
    coalesce: Duration,
}

/// Events per page of a rebuild, unless [`ProjectionRunner::with_rebuild_batch`] says
/// otherwise. The `--only rebuild` bench: `agent_state` over 100 512 events (50 511 applied)
/// rebuilt at 20 597/s with pages of 500, 74 726/s with 2 000, 101 588/s with 5 000 and
/// 108 321/s with 10 000.
pub const REBUILD_BATCH: u32 = 5_000;

impl std::fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.projections.iter().map(|p| p.name()).collect();
        f.debug_struct("ProjectionRunner")
            .field("projections", &names)
            .finish()
    }
}

/// What the runner reads for `projection`: the types it declared, or everything.
fn filter_of(projection: &dyn Projection) -> ReadFilter {
    ReadFilter {
        types: projection
            .types()
            .map(|types| types.iter().map(|t| (*t).to_owned()).collect()),
        or_source_prefix: projection.or_source_prefix().map(str::to_owned),
        ..ReadFilter::default()
    }
}

fn schema_name(name: &str) -> String {
    format!("proj_{name}")
}

fn lock_key(name: &str) -> String {
    format!("switchyard.projection.{name}")
}

impl ProjectionRunner {
    /// A runner for `projections`, applying up to `batch` events per transaction.
    pub fn new(store: EventStore, projections: Vec<Arc<dyn Projection>>, batch: u32) -> Self {
        Self {
            store,
            projections,
            batch: batch.max(1),
            rebuild_batch: REBUILD_BATCH,
            coalesce: Duration::ZERO,
        }
    }

    /// Rebuilds read and apply pages of `batch` events (the live runner's pages stay short,
    /// each one transaction that the projection's readers wait behind).
    #[must_use]
    pub fn with_rebuild_batch(mut self, batch: u32) -> Self {
        self.rebuild_batch = batch.max(1);
        self
    }

    /// Under a steady stream of small commits, waits `coalesce` after a short page before
    /// reading again, so that each projection reads (and commits its checkpoint) at most about
    /// once per `coalesce` instead of once per commit of the store. An idle projection still
    /// wakes at once on the next commit.
    #[must_use]
    pub fn with_coalesce(mut self, coalesce: Duration) -> Self {
        self.coalesce = coalesce;
        self
    }

    /// The built-in projections.
    pub fn builtin() -> Vec<Arc<dyn Projection>> {
        vec![Arc::new(AgentState), Arc::new(Retrospectives)]
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn Projection>> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::Unknown(name.to_owned()))
    }

    /// Creates each projection's schema and tables if they do not exist yet.
    pub async fn ensure_schemas(&self) -> Result<()> {
        for projection in &self.projections {
            let name = projection.name();
            let hash = schema_hash(projection.schema());
            let mut conn = self.store.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            lock(&mut tx, name, true).await?;
            let stored: Option<String> =
                sqlx::query_scalar("SELECT schema_hash FROM projection_schemas WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&mut *tx)
                    .await?;
            let existed = schema_exists(&mut tx, &schema_name(name)).await?;
            create_schema(&mut tx, &schema_name(name), projection.schema(), false).await?;
            tx.commit().await?;
            drop(conn);
            if existed && stored.as_deref() != Some(hash.as_str()) {
                // Its tables changed since they were built: build them again from the store.
                let applied = self.rebuild(name).await?;
                tracing::info!(
                    projection = name,
                    applied,
                    "the projection's tables changed; rebuilt from the store"
                );
            }
            sqlx::query(
                "INSERT INTO projection_schemas (name, schema_hash) VALUES ($1, $2)
                 ON CONFLICT (name) DO UPDATE SET schema_hash = $2, updated_at = now()",
            )
            .bind(name)
            .bind(&hash)
            .execute(self.store.pool())
            .await?;
        }
        Ok(())
    }

    /// Follows the store until `shutdown`, one task per projection.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut tasks = Vec::new();
        for projection in self.projections.clone() {
            let runner = self.clone();
            let shutdown = shutdown.clone();
            tasks.push(tokio::spawn(async move {
                while !shutdown.is_cancelled() {
                    if let Err(e) = runner.follow(&*projection, &shutdown).await {
                        tracing::warn!(projection = projection.name(), error = %e, "projection stopped; restarting");
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    }

    async fn follow(
        &self,
        projection: &dyn Projection,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let mut wakeups = Wakeups::listen(&self.store).await?;
        loop {
            if shutdown.is_cancelled() {
                return Ok(());
            }
            let Advanced {
                read: applied,
                moved,
                held_back,
            } = self.advance(projection).await?;
            // A short page that moved the cursor (applied events, or only skipped others'):
            // more commits are likely on their way, so gather them for `coalesce`.
            if moved && applied < self.batch as usize && !self.coalesce.is_zero() {
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    () = tokio::time::sleep(self.coalesce) => {}
                }
                continue;
            }
            if applied < self.batch as usize {
                let wait = if held_back {
                    5
                } else if !moved {
                    2_000
                } else {
                    1
                };
                tokio::select! {
                    () = shutdown.cancelled() => return Ok(()),
                    _ = wakeups.wait(Duration::from_millis(wait)) => {}
                }
            }
        }
    }

    /// Applies the next batch of one projection; returns how many events it read, and whether
    /// committed events were held back by an older open transaction.
    pub async fn step(&self, projection: &dyn Projection) -> Result<usize> {
        Ok(self.advance(projection).await?.read)
    }

    async fn advance(&self, projection: &dyn Projection) -> Result<Advanced> {
        let name = projection.name();
        // One connection for the whole step: the pool pings each connection given back.
        let mut conn = self.store.pool().acquire().await?;
        let (cursor, _) = checkpoint(&mut *conn, name).await?;
        let page = self
            .store
            .read_all_on(&mut conn, cursor, &filter_of(projection), self.batch)
            .await?;
        let mut advanced = Advanced {
            read: page.events.len(),
            moved: page.next != cursor,
            held_back: page.held_back,
        };
        if !advanced.moved {
            return Ok(advanced);
        }
        if page.events.is_empty() {
            // Only events of other types went by (most of a busy store, for most
            // projections): nothing to apply, so no transaction and no lock, one statement.
            skip_to(&mut conn, name, page.next).await?;
            return Ok(advanced);
        }
        let mut tx = conn.begin().await?;
        lock(&mut tx, name, false).await?;
        // Another instance may have applied this page meanwhile: apply only from where the
        // checkpoint stands now, under the lock.
        let (now, _) = checkpoint(&mut *tx, name).await?;
        if now != cursor {
            advanced.read = 0;
            return Ok(advanced);
        }
        apply_page(&mut tx, projection, &schema_name(name), &page.events).await?;
        save_checkpoint(&mut tx, name, page.next, page.events.len() as i64, false).await?;
        tx.commit().await?;
        Ok(advanced)
    }

    /// Rebuilds a projection from position 0 beside the live one, then swaps it in. Returns
    /// the number of events applied.
    pub async fn rebuild(&self, name: &str) -> Result<i64> {
        self.rebuild_with_progress(name, &|_| {}).await
    }

    /// [`rebuild`](Self::rebuild), calling `progress` with the number of events read so far
    /// after each page.
    #[tracing::instrument(skip(self, progress))]
    pub async fn rebuild_with_progress(
        &self,
        name: &str,
        progress: &(dyn Fn(i64) + Send + Sync),
    ) -> Result<i64> {
        let projection = Arc::clone(self.find(name)?);
        let next_name = format!("{name}__next");
        let next_schema = schema_name(&next_name);
        {
            let mut conn = self.store.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            create_schema(&mut tx, &next_schema, projection.schema(), true).await?;
            sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
                .bind(&next_name)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        // Build beside the live tables, without their lock, from one streaming read: the
        // database sends the next pages while this one is applied. These commits do not wait
        // for the WAL flush: nothing reads the new tables before the swap below, whose commit
        // does wait and so flushes everything before it; a crash before that loses only this
        // rebuild.
        let filter = filter_of(&*projection);
        let mut cursor = Cursor::START;
        let mut applied = 0i64;
        let mut pages = self
            .store
            .scan(Cursor::START, filter.clone(), self.rebuild_batch as usize);
        let mut ended = false;
        let mut conn = self.store.pool().acquire().await?;
        while let Some(scanned) = pages.recv().await {
            match scanned? {
                Scanned::Page(events) => {
                    let mut tx = conn.begin().await?;
                    sqlx::query("SET LOCAL synchronous_commit = off")
                        .execute(&mut *tx)
                        .await?;
                    apply_page(&mut tx, &*projection, &next_schema, &events).await?;
                    tx.commit().await?;
                    applied += events.len() as i64;
                    progress(applied);
                }
                Scanned::End(next) => {
                    cursor = next;
                    ended = true;
                }
            }
        }
        drop(conn);
        if !ended {
            // The scan stopped without saying where: catching up from the start would apply
            // the pages above twice.
            return Err(Error::Store(switchyard_store::Error::Closed));
        }
        // Catch up and swap under the live runner's lock.
        let mut conn = self.store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        lock(&mut tx, name, true).await?;
        loop {
            let page = self
                .store
                .read_all(cursor, &filter, self.rebuild_batch)
                .await?;
            if page.events.is_empty() {
                break;
            }
            apply_page(&mut tx, &*projection, &next_schema, &page.events).await?;
            applied += page.events.len() as i64;
            cursor = page.next;
        }
        let live = schema_name(name);
        let old = schema_name(&format!("{name}__old"));
        for sql in [
            format!("DROP SCHEMA IF EXISTS {old} CASCADE"),
            format!("ALTER SCHEMA {live} RENAME TO {old}"),
            format!("ALTER SCHEMA {next_schema} RENAME TO {live}"),
            format!("DROP SCHEMA {old} CASCADE"),
        ] {
            sqlx::query(&sql).execute(&mut *tx).await?;
        }
        sqlx::query("DELETE FROM projection_checkpoints WHERE name = $1")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        save_checkpoint(&mut tx, name, cursor, applied, true).await?;
        tx.commit().await?;
        tracing::info!(projection = name, applied, "rebuilt and swapped in");
        Ok(applied)
    }

    /// Position and lag of every projection.
    pub async fn status(&self, cap: i64) -> Result<Vec<ProjectionStatus>> {
        let mut out = Vec::new();
        for projection in &self.projections {
            let (cursor, applied) = checkpoint(self.store.pool(), projection.name()).await?;
            out.push(ProjectionStatus {
                name: projection.name().to_owned(),
                cursor: cursor.to_string(),
                applied,
                lag_events: self.store.lag(cursor, cap).await?,
            });
        }
        Ok(out)
    }

    /// The projections this runner runs.
    pub fn names(&self) -> Vec<&'static str> {
        self.projections.iter().map(|p| p.name()).collect()
    }
}

/// Takes a projection's lock for the transaction. A live step's transaction also commits
/// without waiting for the WAL flush (`flush` false): its tables and checkpoint commit
/// together, so a crash that loses the commit loses both, and the projection applies those
/// events again from the checkpoint before them. The appends' own commits, which must wait
/// for the flush, then share the disk with fewer flushes (a raw 100-row insert took 3.6 ms
/// instead of 3.0 beside 1 200 small flushed commits a second).
async fn lock(tx: &mut PgConnection, name: &str, flush: bool) -> Result<()> {
    sqlx::query(if flush {
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))"
    } else {
        "SELECT pg_advisory_xact_lock(hashtextextended($1, 0)),
                set_config('synchronous_commit', 'off', true)"
    })
    .bind(lock_key(name))
    .execute(&mut *tx)
    .await?;
    Ok(())
}

/// SHA-256 (hex) of a projection's table definitions: when it changes, the projection is
/// rebuilt at start.
fn schema_hash(tables: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(tables.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn schema_exists(tx: &mut PgConnection, schema: &str) -> Result<bool> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *tx)
            .await?,
    )
}

async fn create_schema(
    tx: &mut PgConnection,
    schema: &str,
    tables: &str,
    fresh: bool,
) -> Result<()> {
    if fresh {
        sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
            .execute(&mut *tx)
            .await?;
    }
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
            .bind(schema)
            .fetch_one(&mut *tx)
            .await?;
    if !exists {
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&mut *tx)
            .await?;
        sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
            .execute(&mut *tx)
            .await?;
        sqlx::raw_sql(tables).execute(&mut *tx).await?;
    }
    Ok(())
}

#[tracing::instrument(name = "projection.apply", skip_all, fields(projection = projection.name(), events = events.len()))]
async fn apply_page(
    tx: &mut PgConnection,
    projection: &dyn Projection,
    schema: &str,
    events: &[RecordedEvent],
) -> Result<()> {
    sqlx::query(&format!("SET LOCAL search_path TO {schema}, public"))
        .execute(&mut *tx)
        .await?;
    projection.apply_page(&mut *tx, events).await?;
    Ok(())
}

async fn checkpoint<'c, E>(executor: E, name: &str) -> Result<(Cursor, i64)>
where
    E: sqlx::PgExecutor<'c>,
{
    let row: Option<(i64, i64, i64)> = sqlx::query_as(
        "SELECT transaction_id, position, applied FROM projection_checkpoints WHERE name = $1",
    )
    .bind(name)
    .fetch_optional(executor)
    .await?;
    Ok(row.map_or((Cursor::START, 0), |(tx, position, applied)| {
        (
            Cursor {
                transaction: u64::try_from(tx).unwrap_or_default(),
                position,
            },
            applied,
        )
    }))
}

/// Moves a checkpoint past events its projection does not read. Without the projection's
/// lock: it only ever moves the checkpoint forward, so neither another instance that applied
/// further meanwhile nor a rebuild's swap is undone (there was nothing to apply up to `to`).
async fn skip_to(conn: &mut PgConnection, name: &str, to: Cursor) -> Result<()> {
    // One statement, whose commit does not wait for the WAL flush (`set_config(…, true)`
    // lasts until the end of the statement's own transaction): a skip lost in a crash is only
    // read and skipped again.
    sqlx::query(
        "WITH unflushed AS (SELECT set_config('synchronous_commit', 'off', true) AS setting)
         INSERT INTO projection_checkpoints (name, transaction_id, position, applied, updated_at)
         SELECT $1, $2, $3, 0, now() FROM unflushed
         ON CONFLICT (name) DO UPDATE SET transaction_id = $2, position = $3, updated_at = now()
         WHERE (projection_checkpoints.transaction_id, projection_checkpoints.position) < ($2, $3)",
    )
    .bind(name)
    .bind(i64::try_from(to.transaction).unwrap_or(i64::MAX))
    .bind(to.position)
    .execute(conn)
    .await?;
    Ok(())
}

async fn save_checkpoint(
    tx: &mut PgConnection,
    name: &str,
    cursor: Cursor,
    applied: i64,
    reset: bool,
) -> Result<()> {
    let sql = if reset {
        "INSERT INTO projection_checkpoints (name, transaction_id, position, applied, updated_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (name) DO UPDATE SET transaction_id = $2, position = $3, applied = $4, updated_at = now()"
    } else {
        "INSERT INTO projection_checkpoints (name, transaction_id, position, applied, updated_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (name) DO UPDATE SET transaction_id = $2, position = $3,
             applied = projection_checkpoints.applied + $4, updated_at = now()"
    };
    sqlx::query(sql)
        .bind(name)
        .bind(i64::try_from(cursor.transaction).unwrap_or(i64::MAX))
        .bind(cursor.position)
        .bind(applied)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
