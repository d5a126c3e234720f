//! Appending inside one transaction: several independent appends ("jobs") are planned
//! together, so that concurrent callers share one commit, while each job stays all or nothing
//! and sees its own conflicts.

use std::collections::{HashMap, HashSet};

use chrono::Utc;
use serde_json::Value;
use sqlx::PgConnection;
use switchyard_events::{EventId, NewEvent, Source, StreamId, Workspace};

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

/// Rows to insert, column by column, as `unnest` wants them.
#[derive(Default)]
struct Columns {
    workspace: Vec<String>,
    stream_id: Vec<String>,
    stream_version: Vec<i64>,
    id: Vec<String>,
    source: Vec<String>,
    ty: Vec<String>,
    time: Vec<chrono::DateTime<Utc>>,
    data: Vec<Value>,
    correlation_id: Vec<String>,
    causation_id: Vec<Option<String>>,
    traceparent: Vec<Option<String>>,
    extensions: Vec<Option<Value>>,
}

impl Columns {
    fn push(&mut self, event: &NewEvent, version: u64, now: chrono::DateTime<Utc>) {
        self.workspace.push(event.workspace.as_str().to_owned());
        self.stream_id.push(event.stream.as_str().to_owned());
        self.stream_version
            .push(i64::try_from(version).unwrap_or(i64::MAX));
        self.id.push(event.id.as_str().to_owned());
        self.source.push(event.source.as_str().to_owned());
        self.ty.push(event.ty.as_str().to_owned());
        self.time.push(event.time.unwrap_or(now));
        self.data.push(event.data.clone());
        self.correlation_id.push(
            event
                .correlation_id
                .clone()
                .unwrap_or_else(|| event.id.as_str().to_owned()),
        );
        self.causation_id.push(event.causation_id.clone());
        self.traceparent.push(event.traceparent.clone());
        self.extensions
            .push((!event.extensions.is_empty()).then(|| Value::Object(event.extensions.clone())));
    }

    fn len(&self) -> usize {
        self.id.len()
    }
}

/// Where the outcome of one event of a job comes from.
enum Slot {
    /// Already in the store.
    Existing(Appended),
    /// Inserted as row `n` of this transaction, at this stream version.
    New { row: usize, version: u64 },
}

/// Appends `jobs` inside the caller's transaction. Each job is all or nothing: a job whose
/// expected version does not hold gets [`Error::Conflict`] and none of its events are written,
/// while the other jobs proceed. Events already in the store are reported as duplicates.
///
/// Jobs must be valid (see [`crate::validate`]) and must not share idempotency keys with each
/// other. A unique violation (a concurrent writer raced this one) is returned as the outer
/// error, and the transaction must then be rolled back and retried.
pub(crate) async fn write(
    conn: &mut PgConnection,
    jobs: &[&[NewEvent]],
) -> Result<Vec<Result<Vec<Appended>>>, sqlx::Error> {
    let events = || jobs.iter().flat_map(|job| job.iter());

    // 1. Which events are already in the store?
    let (mut ws, mut src, mut ids) = (Vec::new(), Vec::new(), Vec::new());
    for event in events() {
        ws.push(event.workspace.as_str());
        src.push(event.source.as_str());
        ids.push(event.id.as_str());
    }
    let existing_rows: Vec<(String, String, String, i64, String, i64)> = sqlx::query_as(
        "SELECT e.workspace, e.source, e.id, e.position, e.stream_id, e.stream_version
         FROM unnest($1::text[], $2::text[], $3::text[]) AS k(workspace, source, id)
         JOIN events e ON e.workspace = k.workspace AND e.source = k.source AND e.id = k.id",
    )
    .bind(&ws)
    .bind(&src)
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?;
    let existing: HashMap<Key, Appended> = existing_rows
        .into_iter()
        .filter_map(|(workspace, source, id, position, stream, version)| {
            let appended = Appended {
                id: EventId::parse(&id).ok()?,
                position,
                stream: StreamId::parse(&stream).ok()?,
                stream_version: u64::try_from(version).ok()?,
                duplicate: true,
            };
            Some(((workspace, source, id), appended))
        })
        .collect();

    // 2. Where do the streams that get new events stand?
    let mut streams: HashSet<(&Workspace, &StreamId)> = HashSet::new();
    for event in events() {
        if !existing.contains_key(&key(event)) {
            streams.insert((&event.workspace, &event.stream));
        }
    }
    let mut versions: HashMap<(String, String), u64> = HashMap::new();
    if !streams.is_empty() {
        let (sws, sids): (Vec<&str>, Vec<&str>) = streams
            .iter()
            .map(|(w, s)| (w.as_str(), s.as_str()))
            .unzip();
        let rows: Vec<(String, String, i64)> = sqlx::query_as(
            "SELECT k.workspace, k.stream_id,
                    coalesce((SELECT max(e.stream_version) FROM events e
                              WHERE e.workspace = k.workspace AND e.stream_id = k.stream_id), 0)
             FROM unnest($1::text[], $2::text[]) AS k(workspace, stream_id)",
        )
        .bind(&sws)
        .bind(&sids)
        .fetch_all(&mut *conn)
        .await?;
        for (w, s, v) in rows {
            versions.insert((w, s), u64::try_from(v).unwrap_or_default());
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
        positions = sqlx::query_scalar(
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
        )
        .bind(&columns.workspace)
        .bind(&columns.stream_id)
        .bind(&columns.stream_version)
        .bind(&columns.id)
        .bind(&columns.source)
        .bind(&columns.ty)
        .bind(&columns.time)
        .bind(&columns.data)
        .bind(&columns.correlation_id)
        .bind(&columns.causation_id)
        .bind(&columns.traceparent)
        .bind(&columns.extensions)
        .fetch_all(&mut *conn)
        .await?;
        // Identity values are drawn in insertion order, which ORDER BY ord fixes; sorting
        // the returned positions makes the mapping independent of RETURNING's row order.
        positions.sort_unstable();
    }

    Ok(jobs
        .iter()
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
        .collect())
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
