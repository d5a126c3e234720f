//! The raw limits beneath each path, measured on the same PostgreSQL and nats-server: the
//! plainest statement or client call that does the same physical work.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use async_nats::jetstream;
use futures::TryStreamExt as _;
use indicatif::ProgressBar;
use sqlx::{Executor as _, PgPool, Row as _};

use crate::load::{Figures, closed_loop, open_loop};

/// `raw_events`: a copy of `events` with its columns and indexes, without its trigger.
pub(crate) async fn create_table(pool: &PgPool) -> anyhow::Result<()> {
    pool.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        .await
        .context("creating raw_events")?;
    Ok(())
}

const RAW_INSERT: &str = "INSERT INTO raw_events
    (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
    VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $4)";

const RAW_BATCH: &str = "INSERT INTO raw_events
    (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
    SELECT w, s, v, i, src, t, now(), d, i
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::jsonb[])
         AS u(w, s, v, i, src, t, d)";

fn data(n: u64) -> serde_json::Value {
    serde_json::json!({"n": n, "text": "a small payload, like most events"})
}

/// One row per transaction (autocommit), `clients` connections, `total` rows.
pub(crate) async fn single_inserts(
    pool: &PgPool,
    clients: usize,
    total: u64,
    bar: &ProgressBar,
) -> anyhow::Result<Figures> {
    let pool = pool.clone();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    closed_loop(clients, total, 1, bar, move |n| {
        let (pool, tag) = (pool.clone(), tag.clone());
        async move {
            sqlx::query(RAW_INSERT)
                .bind("bench")
                .bind(format!("raw/{tag}/{n}"))
                .bind(1_i64)
                .bind(uuid::Uuid::now_v7().to_string())
                .bind("/bench")
                .bind("bench.note.v1")
                .bind(data(n))
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await
}

/// `batches` inserts of `size` rows each (one `INSERT … SELECT FROM unnest`), one after the
/// other on one connection.
pub(crate) async fn batch_inserts(
    pool: &PgPool,
    batches: u64,
    size: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Figures> {
    let pool = pool.clone();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    closed_loop(1, batches, size as u64, bar, move |b| {
        let (pool, tag) = (pool.clone(), tag.clone());
        async move {
            let n = size;
            let stream = format!("rawbatch/{tag}/{b}");
            let versions: Vec<i64> = (1..=n as i64).collect();
            let ids: Vec<String> = (0..n).map(|_| uuid::Uuid::now_v7().to_string()).collect();
            let datas: Vec<serde_json::Value> = (0..n as u64).map(data).collect();
            sqlx::query(RAW_BATCH)
                .bind(vec!["bench"; n])
                .bind(vec![stream; n])
                .bind(versions)
                .bind(ids)
                .bind(vec!["/bench"; n])
                .bind(vec!["bench.note.v1"; n])
                .bind(datas)
                .execute(&pool)
                .await?;
            Ok(())
        }
    })
    .await
}

/// Every row of `events` in global order, every column decoded, one streaming query.
pub(crate) async fn ordered_read(pool: &PgPool) -> anyhow::Result<Figures> {
    let started = Instant::now();
    let mut rows = sqlx::query(
        "SELECT position, workspace, stream_id, stream_version, id, source, type, time, data,
                correlation_id, causation_id, transaction_id::text::int8 AS transaction_id
         FROM events ORDER BY position",
    )
    .fetch(pool);
    let mut count = 0u64;
    let mut bytes = 0usize;
    while let Some(row) = rows.try_next().await? {
        let position: i64 = row.try_get("position")?;
        let stream: String = row.try_get("stream_id")?;
        let ty: String = row.try_get("type")?;
        let id: String = row.try_get("id")?;
        let time: chrono::DateTime<chrono::Utc> = row.try_get("time")?;
        let data: serde_json::Value = row.try_get("data")?;
        bytes += stream.len() + ty.len() + id.len() + usize::from(!data.is_null());
        std::hint::black_box((position, time));
        count += 1;
    }
    std::hint::black_box(bytes);
    Ok(Figures::new(count, started.elapsed(), Vec::new()))
}

/// JetStream publishes to a stream of the bench's own (file storage, like the relay's), each
/// awaiting its ack, at `rate` per second: publish → ack latency.
pub(crate) async fn jetstream_at_rate(
    js: &jetstream::Context,
    subject: &str,
    rate: u32,
    duration: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<Figures> {
    let subject = Arc::new(subject.to_owned());
    open_loop(rate, duration, bar, |n, due| {
        let (js, subject) = (js.clone(), Arc::clone(&subject));
        async move {
            let payload = serde_json::to_vec(&data(n))?;
            js.publish(subject.to_string(), payload.into())
                .await?
                .await?;
            Ok(due.elapsed())
        }
    })
    .await
}

/// As many JetStream publishes as `window` in flight allow: the throughput limit.
pub(crate) async fn jetstream_max(
    js: &jetstream::Context,
    subject: &str,
    total: u64,
    window: usize,
    bar: &ProgressBar,
) -> anyhow::Result<Figures> {
    let (js, subject) = (js.clone(), subject.to_owned());
    closed_loop(window, total, 1, bar, move |n| {
        let (js, subject) = (js.clone(), subject.clone());
        async move {
            let payload = serde_json::to_vec(&data(n))?;
            js.publish(subject, payload.into()).await?.await?;
            Ok(())
        }
    })
    .await
}

/// Counts the rows of a table (to check that nothing was lost).
pub(crate) async fn count(pool: &PgPool, sql: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query(sql).fetch_one(pool).await?.try_get(0)?)
}
