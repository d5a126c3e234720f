//! Appending inside one transaction: several independent appends ("jobs") are planned
//! together, so that concurrent callers share one commit, while each job stays all or nothing
//! and sees its own conflicts.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use serde_json::Value;
use sqlx::{PgConnection, Postgres, postgres::PgArguments, query::QueryAs, types::Json};
use switchyard_events::{EventId, ExpectedVersion, NewEvent, Source, StreamId, Workspace};

use crate::{Error, Result};

/// The outcome of appending one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    /// The event's id.
    pub id: EventId,
    /// Its global position (`sequence`). For a duplicate, the original event's position.
    pub position: i64,
    /// Its stream.
    pub stream: StreamId,
    /// Its version in the stream. For a duplicate, the original event's version.
    pub stream_version: u64,
    /// True when an event with the same `(workspace, source, id)` was already in the store:
    /// nothing was appended and the original is described.
    pub duplicate: bool,
}

/// The idempotency key of an event.
pub(crate) type Key = (String, String, String);

pub(crate) fn key(event: &NewEvent) -> Key {
    (
        event.workspace.as_str().to_owned(),
        event.source.as_str().to_owned(),
        event.id.as_str().to_owned(),
    )
}

/// Rows to insert, column by column, as `unnest` wants them; borrowed from the events, which
/// outlive the statement (a group's retry needs them again).
#[derive(Default)]
struct Columns<'a> {
    workspace: Vec<&'a str>,
    stream_id: Vec<&'a str>,
    stream_version: Vec<i64>,
    id: Vec<&'a str>,
    source: Vec<&'a str>,
    ty: Vec<&'a str>,
    time: Vec<chrono::DateTime<Utc>>,
    data: Vec<Json<&'a Value>>,
    correlation_id: Vec<&'a str>,
    causation_id: Vec<Option<&'a str>>,
    traceparent: Vec<Option<&'a str>>,
    extensions: Vec<Option<Json<&'a serde_json::Map<String, Value>>>>,
}

impl<'a> Columns<'a> {
    fn push(&mut self, event: &'a NewEvent, version: u64, now: chrono::DateTime<Utc>) {
        self.workspace.push(event.workspace.as_str());
        self.stream_id.push(event.stream.as_str());
        self.stream_version
            .push(i64::try_from(version).unwrap_or(i64::MAX));
        self.id.push(event.id.as_str());
        self.source.push(event.source.as_str());
        self.ty.push(event.ty.as_str());
        self.time.push(event.time.unwrap_or(now));
        self.data.push(Json(&event.data));
        self.correlation_id
            .push(event.correlation_id.as_deref().unwrap_or(event.id.as_str()));
        self.causation_id.push(event.causation_id.as_deref());
        self.traceparent.push(event.traceparent.as_deref());
        self.extensions
            .push((!event.extensions.is_empty()).then_some(Json(&event.extensions)));
    }

    fn len(&self) -> usize {
        self.id.len()
    }

    /// Binds the columns as `$1` to `$12`, in the order both INSERTs name them.
    fn bind<'q, O>(
        &'q self,
        query: QueryAs<'q, Postgres, O, PgArguments>,
    ) -> QueryAs<'q, Postgres, O, PgArguments> {
        query
            .bind(&self.workspace)
            .bind(&self.stream_id)
            .bind(&self.stream_version)
            .bind(&self.id)
            .bind(&self.source)
            .bind(&self.ty)
            .bind(&self.time)
            .bind(&self.data)
            .bind(&self.correlation_id)
            .bind(&self.causation_id)
            .bind(&self.traceparent)
            .bind(&self.extensions)
    }
}

/// How much `write` looks up before it inserts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// Only stream versions (read inside the INSERT when every event appends to whatever its
    /// stream holds): assume no event is stored yet. Right for nearly every append
    /// (fresh ids); a stored one makes the INSERT fail on the unique index, or its expectation
    /// fail, and the append is then planned again with [`Lookup::Full`]. Only for autocommit
    /// use: the failed INSERT would abort a caller's transaction.
    Optimistic,
    /// Stream versions and which events are already stored.
    Full,
}

/// What `write` did.
pub(crate) enum Written {
    /// The outcome of each job; the new events are inserted.
    Done(Vec<Result<Vec<Appended>>>),
    /// An optimistic plan met a conflict; nothing was written. Plan again with a full lookup.
    NeedsFullLookup,
}

/// A row of the lookup: a stored event (`known`) or a stream's last version.
#[derive(sqlx::FromRow)]
struct LookupRow {
    known: bool,
    workspace: String,
    stream_id: String,
    stream_version: i64,
    source: Option<String>,
    id: Option<String>,
    position: Option<i64>,
}

/// Where the outcome of one event of a job comes from.
enum Slot {
    /// Already in the store.
    Existing(Appended),
    /// Inserted as row `n` of this transaction, at this stream version.
    New { row: usize, version: u64 },
}

/// Appends `jobs` on `conn`, inside the caller's transaction or in autocommit mode (the one
/// INSERT is atomic by itself, and the unique indexes re-check what the lookup read). Each job
/// is all or nothing: a job whose expected version does not hold gets [`Error::Conflict`] and
/// none of its events are written, while the other jobs proceed. Events already in the store
/// are reported as duplicates.
///
/// Jobs must be valid (see [`crate::validate`]) and must not share idempotency keys with each
/// other. A unique violation (a concurrent writer raced this one) is returned as the outer
/// error; the caller's transaction, if any, is then aborted and must be retried.
pub(crate) async fn write(
    conn: &mut PgConnection,
    jobs: &[&[NewEvent]],
    lookup: Lookup,
) -> Result<Written, sqlx::Error> {
    let events = || jobs.iter().flat_map(|job| job.iter());
    if lookup == Lookup::Optimistic
        && events().all(|event| event.expected_version == ExpectedVersion::Any)
    {
        return write_drawing_versions(conn, jobs).await;
    }

    // 1. In one round trip: which events are already stored, and where their streams stand.
    let (mut ws, mut src, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    let mut streams: HashSet<(&Workspace, &StreamId)> = HashSet::new();
    for event in events() {
        if lookup == Lookup::Full {
            ws.push(event.workspace.as_str());
            src.push(event.source.as_str());
            ids.push(event.id.as_str());
        }
        streams.insert((&event.workspace, &event.stream));
    }
    let (sws, sids): (Vec<&str>, Vec<&str>) = streams
        .iter()
        .map(|(w, s)| (w.as_str(), s.as_str()))
        .unzip();
    let rows: Vec<LookupRow> = sqlx::query_as(
        "SELECT true AS known, e.workspace, e.stream_id, e.stream_version, e.source, e.id, e.position
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(workspace, source, id)
         JOIN events e ON e.workspace = k.workspace AND e.source = k.source AND e.id = k.id
         UNION ALL
         SELECT false, s.workspace, s.stream_id,
                coalesce((SELECT max(e.stream_version) FROM events e
                          WHERE e.workspace = s.workspace AND e.stream_id = s.stream_id), 0),
                NULL, NULL, NULL
         FROM unnest($4::text[], $5::text[]) AS s(workspace, stream_id)",
    )
    .bind(&ws)
    .bind(&src)
    .bind(&ids)
    .bind(&sws)
    .bind(&sids)
    .fetch_all(&mut *conn)
    .await?;
    let mut existing: HashMap<Key, Appended> = HashMap::new();
    let mut versions: HashMap<(String, String), u64> = HashMap::new();
    for row in rows {
        let version = u64::try_from(row.stream_version).unwrap_or_default();
        match (row.known, row.source, row.id, row.position) {
            (true, Some(source), Some(id), Some(position)) => {
                let (Ok(event_id), Ok(stream)) =
                    (EventId::parse(&id), StreamId::parse(&row.stream_id))
                else {
                    continue;
                };
                let original = Appended {
                    id: event_id,
                    position,
                    stream,
                    stream_version: version,
                    duplicate: true,
                };
                existing.insert((row.workspace, source, id), original);
            }
            _ => {
                versions.insert((row.workspace, row.stream_id), version);
            }
        }
    }

    // 3. Plan each job against the versions left by the jobs before it.
    let now = Utc::now();
    let mut columns = Columns::default();
    let mut plans: Vec<Result<Vec<Slot>>> = Vec::with_capacity(jobs.len());
    for job in jobs {
        let mut tentative: HashMap<(String, String), u64> = HashMap::new();
        let mut slots = Vec::with_capacity(job.len());
        let mut conflict = None;
        for event in job.iter() {
            if let Some(original) = existing.get(&key(event)) {
                slots.push(Slot::Existing(original.clone()));
                continue;
            }
            let stream_key = (
                event.workspace.as_str().to_owned(),
                event.stream.as_str().to_owned(),
            );
            let current = tentative
                .get(&stream_key)
                .or_else(|| versions.get(&stream_key))
                .copied()
                .unwrap_or_default();
            if !event.expected_version.admits(current) {
                conflict = Some(Error::Conflict {
                    workspace: event.workspace.clone(),
                    stream: event.stream.clone(),
                    expected: event.expected_version,
                    actual: current,
                });
                break;
            }
            tentative.insert(stream_key, current + 1);
            slots.push(Slot::New {
                row: usize::MAX,
                version: current + 1,
            });
        }
        if let Some(conflict) = conflict {
            if lookup == Lookup::Optimistic {
                // Perhaps a retry of an event that is stored already: look before judging.
                return Ok(Written::NeedsFullLookup);
            }
            plans.push(Err(conflict));
            continue;
        }
        // The job holds: its rows join the insert, its versions become the baseline.
        for (event, slot) in job.iter().zip(slots.iter_mut()) {
            if let Slot::New { row, version } = slot {
                *row = columns.len();
                columns.push(event, *version, now);
            }
        }
        versions.extend(tentative);
        plans.push(Ok(slots));
    }

    // 4. One insert for every new event of every job, in order.
    let mut positions: Vec<i64> = Vec::new();
    if columns.len() > 0 {
        let rows: Vec<(i64,)> = columns
            .bind(sqlx::query_as(
                "INSERT INTO events (workspace, stream_id, stream_version, id, source, type, time, data,
                                 correlation_id, causation_id, traceparent, extensions)
             SELECT workspace, stream_id, stream_version, id, source, type, time, data,
                    correlation_id, causation_id, traceparent, extensions
             FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                         $7::timestamptz[], $8::jsonb[], $9::text[], $10::text[], $11::text[],
                         $12::jsonb[])
                  WITH ORDINALITY AS t(workspace, stream_id, stream_version, id, source, type,
                                       time, data, correlation_id, causation_id, traceparent,
                                       extensions, ord)
             ORDER BY ord
             RETURNING position",
            ))
            .fetch_all(&mut *conn)
            .await?;
        positions = rows.into_iter().map(|(position,)| position).collect();
        // Identity values are drawn in insertion order, which ORDER BY ord fixes; sorting
        // the returned positions makes the mapping independent of RETURNING's row order.
        positions.sort_unstable();
    }

    Ok(Written::Done(
        jobs.iter()
            .zip(plans)
            .map(|(job, plan)| {
                let slots = plan?;
                Ok(job
                    .iter()
                    .zip(slots)
                    .map(|(event, slot)| match slot {
                        Slot::Existing(original) => original,
                        Slot::New { row, version } => Appended {
                            id: event.id.clone(),
                            position: positions.get(row).copied().unwrap_or_default(),
                            stream: event.stream.clone(),
                            stream_version: version,
                            duplicate: false,
                        },
                    })
                    .collect())
            })
            .collect(),
    ))
}

/// The INSERT of [`write_drawing_versions`]: `$3` holds each event's place in its stream
/// among the new events, and each stream's last version is read inside the statement.
const INSERT_DRAWING_VERSIONS: &str = "
    WITH last AS (
        SELECT s.workspace, s.stream_id,
               coalesce((SELECT max(e.stream_version) FROM events e
                         WHERE e.workspace = s.workspace AND e.stream_id = s.stream_id), 0)
                   AS version
        FROM unnest($13::text[], $14::text[]) AS s(workspace, stream_id)
    )
    INSERT INTO events (workspace, stream_id, stream_version, id, source, type, time, data,
                        correlation_id, causation_id, traceparent, extensions)
    SELECT t.workspace, t.stream_id, last.version + t.place, t.id, t.source, t.type, t.time,
           t.data, t.correlation_id, t.causation_id, t.traceparent, t.extensions
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[],
                $7::timestamptz[], $8::jsonb[], $9::text[], $10::text[], $11::text[],
                $12::jsonb[])
         WITH ORDINALITY AS t(workspace, stream_id, place, id, source, type, time, data,
                              correlation_id, causation_id, traceparent, extensions, ord)
    JOIN last ON last.workspace = t.workspace AND last.stream_id = t.stream_id
    ORDER BY t.ord
    RETURNING position, stream_version";

/// [`write`] when every event appends to whatever its stream holds and none is expected to
/// be stored yet: nothing can conflict, so no plan is needed and the versions are drawn in
/// the INSERT itself. One round trip instead of two. A stored event or a concurrent writer
/// of the same stream makes it fail on a unique index, as the optimistic plan does.
async fn write_drawing_versions(
    conn: &mut PgConnection,
    jobs: &[&[NewEvent]],
) -> Result<Written, sqlx::Error> {
    let now = Utc::now();
    let mut columns = Columns::default();
    let mut places: HashMap<(&str, &str), u64> = HashMap::new();
    for event in jobs.iter().flat_map(|job| job.iter()) {
        let place = places
            .entry((event.workspace.as_str(), event.stream.as_str()))
            .or_default();
        *place += 1;
        columns.push(event, *place, now);
    }
    let (sws, sids): (Vec<&str>, Vec<&str>) = places.keys().copied().unzip();
    let mut rows: Vec<(i64, i64)> = columns
        .bind(sqlx::query_as(INSERT_DRAWING_VERSIONS))
        .bind(&sws)
        .bind(&sids)
        .fetch_all(&mut *conn)
        .await?;
    if rows.len() != columns.len() {
        // The join lost a row: only a bug here could do that; say so rather than guess.
        return Err(sqlx::Error::Protocol(format!(
            "{} events inserted for {} appended",
            rows.len(),
            columns.len()
        )));
    }
    // Positions are drawn in insertion order (ORDER BY ord), whatever RETURNING's order.
    rows.sort_unstable();
    let mut rows = rows.into_iter();
    Ok(Written::Done(
        jobs.iter()
            .map(|job| {
                Ok(job
                    .iter()
                    .map(|event| {
                        let (position, version) = rows.next().unwrap_or_default();
                        Appended {
                            id: event.id.clone(),
                            position,
                            stream: event.stream.clone(),
                            stream_version: u64::try_from(version).unwrap_or_default(),
                            duplicate: false,
                        }
                    })
                    .collect())
            })
            .collect(),
    ))
}

/// Checks a batch before it goes anywhere near the database: its size, its data against the
/// catalog, and that no `(source, id)` repeats within it.
pub(crate) fn validate(
    catalog: &switchyard_events::Catalog,
    events: &[NewEvent],
    max_batch: usize,
) -> Result<()> {
    if events.is_empty() || events.len() > max_batch {
        return Err(Error::BatchSize {
            len: events.len(),
            max: max_batch,
        });
    }
    let mut seen: HashMap<(&Workspace, &Source, &EventId), usize> = HashMap::new();
    for (index, event) in events.iter().enumerate() {
        catalog
            .validate(&event.ty, &event.data)
            .map_err(|source| Error::Invalid { index, source })?;
        if let Some(&first) = seen.get(&(&event.workspace, &event.source, &event.id)) {
            return Err(Error::DuplicateInBatch { index, first });
        }
        seen.insert((&event.workspace, &event.source, &event.id), index);
    }
    Ok(())
}
