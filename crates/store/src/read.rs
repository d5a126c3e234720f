//! Reading: one stream in version order, or everything in the gap-free global order.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use switchyard_events::{
    Cursor, EventId, EventType, InvalidId, RecordedEvent, Source, StreamId, Workspace,
};

use sqlx::{FromRow, PgConnection, Row, postgres::PgRow};

use crate::{Error, EventStore, Result};

/// Which events a global read returns. Filters never change the order or the cursor's meaning.
#[derive(Debug, Clone, Default)]
pub struct ReadFilter {
    /// Only this workspace's events.
    pub workspace: Option<Workspace>,
    /// Only events of this type.
    pub ty: Option<EventType>,
    /// Only events of one of these types (a projection's): the others are skipped in the
    /// database, never sent or decoded. `None`: every type.
    pub types: Option<Vec<String>>,
    /// With `types`: also events whose source starts with this (a projection that counts
    /// every agent's events, `/agents/`, whatever their type).
    pub or_source_prefix: Option<String>,
}

/// A page of a global read.
#[derive(Debug, Clone)]
pub struct Page {
    /// The events, in global order.
    pub events: Vec<RecordedEvent>,
    /// Where the next read starts. It moves past events the filter skipped, and past the
    /// whole visible store when the page is not full, so a filtered reader does not rescan.
    pub next: Cursor,
    /// Committed events exist that this read could not return yet, because an older
    /// transaction is still open somewhere in the cluster. A follower should look again soon
    /// rather than wait for the next notification (the holder may append nothing).
    pub held_back: bool,
}

#[derive(sqlx::FromRow)]
struct EventRow {
    position: i64,
    tx: i64,
    workspace: String,
    stream_id: String,
    stream_version: i64,
    id: String,
    source: String,
    #[sqlx(rename = "type")]
    ty: String,
    time: DateTime<Utc>,
    data: Value,
    correlation_id: String,
    causation_id: Option<String>,
    traceparent: Option<String>,
    extensions: Option<Value>,
    recorded_at: DateTime<Utc>,
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self> {
        let position = row.position;
        let corrupt = |source: InvalidId| Error::Corrupt { position, source };
        let extensions = match row.extensions {
            Some(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Ok(RecordedEvent {
            position,
            cursor: Cursor {
                transaction: u64::try_from(row.tx).unwrap_or_default(),
                position,
            },
            stream_version: u64::try_from(row.stream_version).unwrap_or_default(),
            id: EventId::parse(&row.id).map_err(corrupt)?,
            source: Source::parse(&row.source).map_err(corrupt)?,
            ty: EventType::parse(&row.ty).map_err(corrupt)?,
            workspace: Workspace::parse(&row.workspace).map_err(corrupt)?,
            stream: StreamId::parse(&row.stream_id).map_err(corrupt)?,
            time: row.time,
            data: row.data,
            correlation_id: row.correlation_id,
            causation_id: row.causation_id,
            traceparent: row.traceparent,
            extensions,
            recorded_at: row.recorded_at,
        })
    }
}

/// The columns of an [`EventRow`], for `SELECT`.
macro_rules! event_columns {
    ($alias:literal) => {
        concat!(
            $alias,
            "position, ",
            $alias,
            "transaction_id::text::int8 AS tx, ",
            $alias,
            "workspace, ",
            $alias,
            "stream_id, ",
            $alias,
            "stream_version, ",
            $alias,
            "id, ",
            $alias,
            "source, ",
            $alias,
            "type, ",
            $alias,
            "time, ",
            $alias,
            "data, ",
            $alias,
            "correlation_id, ",
            $alias,
            "causation_id, ",
            $alias,
            "traceparent, ",
            $alias,
            "extensions, ",
            $alias,
            "recorded_at"
        )
    };
}

impl EventStore {
    /// Reads up to `limit` events after `after`, in global order. Only events of transactions
    /// older than every transaction still running are returned, so nothing that commits later
    /// can ever land behind the returned cursor.
    ///
    /// The read walks the global-order index, whatever the table's statistics say: with
    /// statistics from when the table was small (autovacuum analyzes it late under a burst of
    /// appends), the planner took a bitmap scan of every event after `after` and a sort
    /// (spilled to disk) for each page, 94 ms instead of 5.5 ms per page of 5 000 at 100 000
    /// events, and a rebuild or a reader paging from the start became quadratic. Sorts, bitmap
    /// and sequential scans are off for the read's own statement ([`ordered_scans_only`], in
    /// a transaction of its own: two more round trips).
    pub async fn read_all(&self, after: Cursor, filter: &ReadFilter, limit: u32) -> Result<Page> {
        let mut tx = self.pool.begin().await?;
        ordered_scans_only(&mut tx, true).await?;
        let page = read_all(&mut *tx, after, filter, limit, true).await?;
        tx.commit().await?;
        Ok(page)
    }

    /// [`read_all`](Self::read_all) on a connection the caller holds, in one round trip. A
    /// follower that reads many times a second near the head (the relay, a projection step)
    /// saves the pool's round trips: sqlx pings every connection returned to the pool. Its
    /// plan is the planner's: a connection of the caller's own may call
    /// [`ordered_scans_only`] once for the session.
    pub async fn read_all_on(
        &self,
        conn: &mut PgConnection,
        after: Cursor,
        filter: &ReadFilter,
        limit: u32,
    ) -> Result<Page> {
        read_all(conn, after, filter, limit, false).await
    }

    /// Reads a stream's events with versions after `after_version` (0 = from the start), up
    /// to `limit`, in version order.
    pub async fn read_stream(
        &self,
        workspace: &Workspace,
        stream: &StreamId,
        after_version: u64,
        limit: u32,
    ) -> Result<Vec<RecordedEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(concat!(
            "SELECT ",
            event_columns!(""),
            " FROM events
             WHERE workspace = $1 AND stream_id = $2 AND stream_version > $3
             ORDER BY stream_version
             LIMIT $4"
        ))
        .bind(workspace.as_str())
        .bind(stream.as_str())
        .bind(i64::try_from(after_version).unwrap_or(i64::MAX))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(RecordedEvent::try_from).collect()
    }

    /// The last version of a stream; 0 when it does not exist.
    pub async fn stream_version(&self, workspace: &Workspace, stream: &StreamId) -> Result<u64> {
        let version: Option<i64> = sqlx::query_scalar(
            "SELECT max(stream_version) FROM events WHERE workspace = $1 AND stream_id = $2",
        )
        .bind(workspace.as_str())
        .bind(stream.as_str())
        .fetch_one(&self.pool)
        .await?;
        Ok(version
            .and_then(|v| u64::try_from(v).ok())
            .unwrap_or_default())
    }
}

impl EventStore {
    /// The event at a global position, if there is one.
    pub async fn get(&self, position: i64) -> Result<Option<RecordedEvent>> {
        let row: Option<EventRow> = sqlx::query_as(concat!(
            "SELECT ",
            event_columns!(""),
            " FROM events WHERE position = $1"
        ))
        .bind(position)
        .fetch_optional(&self.pool)
        .await?;
        row.map(RecordedEvent::try_from).transpose()
    }

    /// The events at these positions, by position (missing ones are absent).
    pub async fn get_many(
        &self,
        positions: &[i64],
    ) -> Result<std::collections::HashMap<i64, RecordedEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(concat!(
            "SELECT ",
            event_columns!(""),
            " FROM events WHERE position = ANY($1)"
        ))
        .bind(positions)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| RecordedEvent::try_from(row).map(|e| (e.position, e)))
            .collect()
    }

    /// How many visible events lie after `after` (uncapped), where a count that goes on from
    /// this one starts, and the store's head position: for a running count of the store that
    /// does not walk the whole table each time.
    pub async fn count_after(&self, after: Cursor) -> Result<Counted> {
        let mut tx = self.pool.begin().await?;
        ordered_scans_only(&mut tx, true).await?;
        let (head, watermark, events): (Option<i64>, i64, i64) = sqlx::query_as(
            "WITH w AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
             SELECT (SELECT max(position) FROM events), w.xmin::text::int8,
                    (SELECT count(*) FROM events
                     WHERE (transaction_id, position) > ($1::text::xid8, $2)
                       AND transaction_id < w.xmin)
             FROM w",
        )
        .bind(after.transaction.to_string())
        .bind(after.position)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        let watermark = u64::try_from(watermark).unwrap_or_default();
        Ok(Counted {
            events,
            next: past_watermark(watermark).map_or(after, |past| after.max(past)),
            head,
        })
    }

    /// How many visible events lie after `after`, counting up to `cap` (so that a lag query
    /// stays cheap however far behind a reader is).
    pub async fn lag(&self, after: Cursor, cap: i64) -> Result<i64> {
        let mut tx = self.pool.begin().await?;
        ordered_scans_only(&mut tx, true).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (
                 SELECT 1 FROM events
                 WHERE (transaction_id, position) > ($1::text::xid8, $2)
                   AND transaction_id < pg_snapshot_xmin(pg_current_snapshot())
                 LIMIT $3) t",
        )
        .bind(after.transaction.to_string())
        .bind(after.position)
        .bind(cap)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(n)
    }
}

/// Wake-ups for readers that follow the store: a notification arrives when a transaction
/// that appended events commits.
#[derive(Debug)]
pub struct Wakeups {
    listener: sqlx::postgres::PgListener,
}

/// The channel the `events_notify` trigger notifies.
const CHANNEL: &str = "switchyard_events";

impl Wakeups {
    /// Listens on a connection of its own.
    pub async fn listen(store: &EventStore) -> Result<Self> {
        let mut listener = sqlx::postgres::PgListener::connect_with(&store.pool).await?;
        listener.listen(CHANNEL).await?;
        Ok(Self { listener })
    }

    /// Waits until events may have been appended, or `max_wait` passed. Returns whether a
    /// notification came. Notifications that piled up are drained, so one wait covers them.
    /// Connection loss is not an error: the listener reconnects, and the caller reads anyway.
    pub async fn wait(&mut self, max_wait: std::time::Duration) -> bool {
        let notified = matches!(
            tokio::time::timeout(max_wait, self.listener.try_recv()).await,
            Ok(Ok(Some(_)))
        );
        if notified {
            while self.listener.next_buffered().is_some() {}
        }
        notified
    }
}

/// Which events a timeline read returns: one workspace's, optionally narrowed. The workspace
/// and a correlation have indexes of their own (`events_timeline*`), walked backwards; a type
/// or a source is looked for in a bounded window of positions ([`TIMELINE_WINDOW`]).
#[derive(Debug, Clone)]
pub struct TimelineFilter {
    /// The workspace.
    pub workspace: Workspace,
    /// Only events of this type.
    pub ty: Option<EventType>,
    /// Only events from this source (an agent is `/agents/<name>`).
    pub source: Option<String>,
    /// Only events of this correlation.
    pub correlation_id: Option<String>,
}

impl TimelineFilter {
    /// The whole workspace.
    pub fn workspace(workspace: Workspace) -> Self {
        Self {
            workspace,
            ty: None,
            source: None,
            correlation_id: None,
        }
    }

    /// Whether `event` passes the narrowings (the workspace is not checked).
    pub fn admits(&self, event: &RecordedEvent) -> bool {
        self.ty.as_ref().is_none_or(|t| *t == event.ty)
            && self
                .source
                .as_deref()
                .is_none_or(|s| s == event.source.as_str())
            && self
                .correlation_id
                .as_deref()
                .is_none_or(|c| c == event.correlation_id)
    }
}

/// A page of a timeline read, newest first.
#[derive(Debug, Clone)]
pub struct TimelinePage {
    /// The events, newest (highest position) first.
    pub events: Vec<RecordedEvent>,
    /// The `before` of the next older page, when there may be one.
    pub older: Option<i64>,
    /// Where a follower of the store starts so that it misses nothing newer than this page
    /// (and repeats nothing older): every event of this page and below it is visible.
    pub live_from: Cursor,
}

/// How many positions back one timeline page narrowed to a type or a source (and not to a
/// correlation) looks: the workspace's index is walked backwards over at most this window, so
/// a page costs the same however large the store, and a short page (even an empty one) may
/// say that there is more further back. Indexes by type and by source would answer any
/// narrowing from one walk, but every append would pay for two more index entries: measured
/// in `docs/benchmarks.md`, the agent path's latency grew by more than the dashboard gains.
pub const TIMELINE_WINDOW: i64 = 100_000;

impl EventStore {
    /// Reads up to `limit` of a workspace's events below position `before` (`None`: the
    /// newest), newest first. Narrowed to a type or a source only, it looks
    /// [`TIMELINE_WINDOW`] positions back at most; [`TimelinePage::older`] then says where to
    /// go on when the window ran out before the page was full. Only events of transactions older than every transaction still
    /// running are returned, as in [`EventStore::read_all`], so [`TimelinePage::live_from`]
    /// hands over to a gap-free follower without a hole.
    #[tracing::instrument(name = "store.read_newest", skip_all, fields(workspace = %filter.workspace, limit))]
    pub async fn read_newest(
        &self,
        filter: &TimelineFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<TimelinePage> {
        // One statement per narrowing, so that each is planned onto its index (a generic
        // `$n IS NULL OR …` plan would be one plan for all of them).
        let windowed =
            (filter.ty.is_some() || filter.source.is_some()) && filter.correlation_id.is_none();
        let floor = if windowed {
            let top = match before {
                Some(before) => before,
                None => {
                    sqlx::query_scalar::<_, i64>(
                        "SELECT coalesce(max(position), 0) + 1 FROM events",
                    )
                    .fetch_one(&self.pool)
                    .await?
                }
            };
            Some(top.saturating_sub(TIMELINE_WINDOW).max(1))
        } else {
            None
        };
        let mut query = sqlx::QueryBuilder::<sqlx::Postgres>::new(concat!(
            "WITH w AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
             SELECT w.xmin::text::int8 AS watermark, e.*
             FROM w LEFT JOIN LATERAL (SELECT ",
            event_columns!(""),
            // The collation of the events_timeline* indexes (see their migration).
            " FROM events WHERE transaction_id < w.xmin AND workspace COLLATE \"C\" = "
        ));
        query.push_bind(filter.workspace.as_str());
        if let Some(before) = before {
            query.push(" AND position < ").push_bind(before);
        }
        if let Some(floor) = floor {
            query.push(" AND position >= ").push_bind(floor);
        }
        if let Some(ty) = &filter.ty {
            query.push(" AND type = ").push_bind(ty.as_str());
        }
        if let Some(source) = &filter.source {
            query.push(" AND source = ").push_bind(source.as_str());
        }
        if let Some(correlation) = &filter.correlation_id {
            query
                .push(" AND correlation_id = ")
                .push_bind(correlation.as_str());
        }
        query
            .push(" ORDER BY position DESC LIMIT ")
            .push_bind(i64::from(limit))
            .push(") e ON true");
        // Only an index walked backwards reads no more than the page. With statistics taken
        // while the table was small (before autovacuum analyzes it again), the planner chose
        // a bitmap scan of every row below `before` and a sort: 35 ms instead of 0.1 ms at
        // 100 000 events. Sorts and bitmap scans are off for this one statement.
        let mut tx = self.pool.begin().await?;
        ordered_scans_only(&mut tx, true).await?;
        let rows: Vec<PgRow> = query.build().fetch_all(&mut *tx).await?;
        tx.commit().await?;

        let mut watermark = 0u64;
        let mut events = Vec::with_capacity(rows.len());
        for row in &rows {
            watermark = u64::try_from(row.try_get::<i64, _>("watermark")?).unwrap_or_default();
            if row.try_get::<Option<i64>, _>("position")?.is_some() {
                events.push(RecordedEvent::try_from(EventRow::from_row(row)?)?);
            }
        }
        let older = if events.len() == limit as usize {
            events.last().map(|e| e.position)
        } else {
            // A window that ran out above the first position: there may be more below it.
            floor.filter(|f| *f > 1)
        };
        Ok(TimelinePage {
            events,
            older,
            live_from: Cursor {
                transaction: watermark.saturating_sub(1),
                position: i64::MAX,
            },
        })
    }

    /// Every workspace, oldest first: the `workspace.created.v1` events.
    pub async fn workspaces(&self) -> Result<Vec<RecordedEvent>> {
        let rows: Vec<EventRow> = sqlx::query_as(concat!(
            "SELECT ",
            event_columns!(""),
            " FROM events WHERE type = 'workspace.created.v1' AND stream_id = 'workspace'
             ORDER BY position"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(RecordedEvent::try_from).collect()
    }
}

/// What [`EventStore::count_after`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    /// Visible events after the cursor asked about.
    pub events: i64,
    /// Where the next count starts: past every event counted.
    pub next: Cursor,
    /// The highest position in the store, visible or not yet; `None` when it is empty.
    pub head: Option<i64>,
}

/// The cursor just past every event of the transactions below `watermark` (the snapshot's
/// xmin): where a reader that has seen all of them goes on. `None` without a watermark (0).
fn past_watermark(watermark: u64) -> Option<Cursor> {
    (watermark > 0).then(|| Cursor {
        transaction: watermark - 1,
        position: i64::MAX,
    })
}

/// What a [`EventStore::scan`] sends: pages of events in global order, then where the scan
/// ended.
#[derive(Debug)]
pub enum Scanned {
    /// The next events, in global order (a full page, or the last, shorter one).
    Page(Vec<RecordedEvent>),
    /// The scan is over: every visible event after its start that the filter admits was sent.
    /// Where the next read starts (as [`Page::next`] of a read that was not full).
    End(Cursor),
}

impl EventStore {
    /// Every visible event after `after` that `filter` admits, in global order, as one
    /// streaming statement, cut into pages of `page` events: for readers that go through a
    /// large part of the store at once (a projection rebuild). The database sends rows while
    /// the caller applies the pages before them; a paged [`read_all`](Self::read_all) waits
    /// for each page's statement in turn. The statement reads below the watermark of a
    /// snapshot taken before it, so, as with `read_all`, nothing that commits later can land
    /// behind the cursor of [`Scanned::End`]. Events that become visible during the scan are
    /// left to the next read.
    ///
    /// The scan runs in a task of its own, at most two pages ahead of the receiver; dropping
    /// the receiver stops it. An error ends the pages.
    pub fn scan(
        &self,
        after: Cursor,
        filter: ReadFilter,
        page: usize,
    ) -> tokio::sync::mpsc::Receiver<Result<Scanned>> {
        let (sender, receiver) = tokio::sync::mpsc::channel(2);
        let pool = self.pool.clone();
        tokio::spawn(async move {
            if let Err(e) = scan(&pool, after, &filter, page.max(1), &sender).await {
                let _ = sender.send(Err(e)).await;
            }
        });
        receiver
    }
}

async fn scan(
    pool: &sqlx::PgPool,
    after: Cursor,
    filter: &ReadFilter,
    size: usize,
    sender: &tokio::sync::mpsc::Sender<Result<Scanned>>,
) -> Result<()> {
    use futures::TryStreamExt as _;
    let mut tx = pool.begin().await?;
    ordered_scans_only(&mut tx, true).await?;
    // Every transaction below the watermark had ended before this statement, so the scan's
    // snapshot, taken after it, sees all of their events.
    let watermark: i64 =
        sqlx::query_scalar("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::int8")
            .fetch_one(&mut *tx)
            .await?;
    let mut rows = sqlx::query_as::<_, EventRow>(concat!(
        "SELECT ",
        event_columns!(""),
        " FROM events
         WHERE (transaction_id, position) > ($1::text::xid8, $2)
           AND transaction_id < $3::text::xid8
           AND ($4::text IS NULL OR workspace = $4)
           AND ($5::text IS NULL OR type = $5)
           AND ($6::text[] IS NULL OR type = ANY($6) OR starts_with(source, $7))
         ORDER BY transaction_id, position"
    ))
    .bind(after.transaction.to_string())
    .bind(after.position)
    .bind(watermark.to_string())
    .bind(filter.workspace.as_ref().map(Workspace::as_str))
    .bind(filter.ty.as_ref().map(EventType::as_str))
    .bind(filter.types.as_deref())
    .bind(filter.or_source_prefix.as_deref())
    .fetch(&mut *tx);
    let mut last = after;
    let mut page = Vec::with_capacity(size);
    while let Some(row) = rows.try_next().await? {
        let event = RecordedEvent::try_from(row)?;
        last = event.cursor;
        page.push(event);
        if page.len() == size {
            let full = std::mem::replace(&mut page, Vec::with_capacity(size));
            if sender.send(Ok(Scanned::Page(full))).await.is_err() {
                return Ok(()); // the receiver is gone
            }
        }
    }
    drop(rows);
    tx.commit().await?;
    if !page.is_empty() && sender.send(Ok(Scanned::Page(page))).await.is_err() {
        return Ok(());
    }
    let watermark = u64::try_from(watermark).unwrap_or_default();
    let next = past_watermark(watermark).map_or(last, |past| last.max(past));
    let _ = sender.send(Ok(Scanned::End(next))).await;
    Ok(())
}

/// Turns sorts, bitmap scans and sequential scans off on `conn`: for the current transaction
/// (`local`), or for the session. A global read then walks the global-order index and reads
/// no more than its page, and a lag count only the range after its cursor, whatever the
/// table's statistics (see [`EventStore::read_all`]) and whatever plan PostgreSQL keeps for
/// a prepared statement: after five executions of the lag count it kept the generic plan, a
/// sequential scan, 42 ms for a lag of 0 at 100 000 events. For connections that only follow
/// the store (the relay's own).
pub async fn ordered_scans_only(conn: &mut PgConnection, local: bool) -> Result<()> {
    sqlx::query(
        "SELECT set_config('enable_sort', 'off', $1), set_config('enable_bitmapscan', 'off', $1),
                set_config('enable_seqscan', 'off', $1)",
    )
    .bind(local)
    .execute(conn)
    .await?;
    Ok(())
}

/// The statement of a global read, after `$prefix`.
macro_rules! read_all_sql {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "WITH w AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin)
             SELECT w.xmin::text::int8 AS watermark,
                    -- The newest visible row, by an index-only scan backwards: an EXISTS
                    -- here was planned as a sequential scan of the whole table (22 ms at 60 000
                    -- events, per page read; 0.06 ms this way).
                    coalesce((SELECT h.transaction_id FROM events h
                              ORDER BY h.transaction_id DESC LIMIT 1) >= w.xmin, false)
                        AS held_back,
                    e.*
             FROM w LEFT JOIN LATERAL (
                 SELECT ",
            event_columns!(""),
            " FROM events
                 WHERE (transaction_id, position) > ($1::text::xid8, $2)
                   AND transaction_id < w.xmin
                   AND ($3::text IS NULL OR workspace = $3)
                   AND ($4::text IS NULL OR type = $4)
                   AND ($6::text[] IS NULL OR type = ANY($6) OR starts_with(source, $7))
                 ORDER BY transaction_id, position
                 LIMIT $5
             ) e ON true"
        )
    };
}

/// The statement of [`read_all_on`](EventStore::read_all_on): the planner's plan.
const READ_ALL: &str = read_all_sql!("");
/// The statement of [`EventStore::read_all`], always run after [`ordered_scans_only`]. A text
/// of its own, so that it is a prepared statement of its own on every connection: a generic
/// plan that PostgreSQL caches for a statement is built under the settings of the execution
/// that builds it, and kept whatever the settings of later executions.
const READ_ALL_ORDERED: &str = read_all_sql!("/* ordered scans only */ ");

/// The read behind [`EventStore::read_all`] and [`EventStore::read_all_on`].
#[tracing::instrument(name = "store.read_all", skip_all, fields(after = %after, limit))]
async fn read_all<'c, E>(
    executor: E,
    after: Cursor,
    filter: &ReadFilter,
    limit: u32,
    ordered: bool,
) -> Result<Page>
where
    E: sqlx::PgExecutor<'c>,
{
    let rows: Vec<PgRow> = sqlx::query(if ordered { READ_ALL_ORDERED } else { READ_ALL })
        .bind(after.transaction.to_string())
        .bind(after.position)
        .bind(filter.workspace.as_ref().map(Workspace::as_str))
        .bind(filter.ty.as_ref().map(EventType::as_str))
        .bind(i64::from(limit))
        .bind(filter.types.as_deref())
        .bind(filter.or_source_prefix.as_deref())
        .fetch_all(executor)
        .await?;

    // The lateral join yields one row of NULL event columns when nothing is visible, so the
    // watermark of this very snapshot always comes back.
    let mut watermark = 0u64;
    let mut held_back = false;
    let mut events = Vec::with_capacity(rows.len());
    for row in &rows {
        watermark = u64::try_from(row.try_get::<i64, _>("watermark")?).unwrap_or_default();
        held_back = row.try_get("held_back")?;
        if row.try_get::<Option<i64>, _>("position")?.is_some() {
            events.push(RecordedEvent::try_from(EventRow::from_row(row)?)?);
        }
    }
    let mut next = events.last().map_or(after, |e| e.cursor);
    if events.len() < limit as usize
        && let Some(past) = past_watermark(watermark)
    {
        // Everything below the watermark after `after` was scanned: skip past it.
        next = next.max(past);
    }
    Ok(Page {
        events,
        next,
        held_back,
    })
}
