//! Append throughput of the event store next to the raw PostgreSQL limit beneath it, in one
//! run on the same database server.
//!
//! ```text
//! DATABASE_URL=postgres://… cargo bench -p switchyard-store --bench append
//! ```
//!
//! It creates a throwaway database, measures, prints a Markdown table (the one in
//! `docs/benchmarks.md`) and drops the database. `SY_BENCH_EVENTS` scales the runs.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that fails should stop loudly

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use sqlx::{Executor, PgPool};
use switchyard_events::{Catalog, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_store::{EventStore, MIGRATOR, StoreConfig};
use switchyard_testkit::TempDatabase;

const RAW_INSERT: &str = "INSERT INTO raw_events
    (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
    VALUES ($1, $2, $3, $4, $5, $6, now(), $7, $4)";

const RAW_BATCH: &str = "INSERT INTO raw_events
    (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
    SELECT w, s, v, i, src, t, now(), d, i
    FROM unnest($1::text[], $2::text[], $3::int8[], $4::text[], $5::text[], $6::text[], $7::jsonb[])
         AS u(w, s, v, i, src, t, d)";

struct Row {
    path: &'static str,
    events: usize,
    elapsed: Duration,
}

impl Row {
    fn rate(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }
}

fn data(n: usize) -> serde_json::Value {
    json!({"agent": "bench", "key": format!("k{n}"), "value": {"n": n, "text": "a small payload, like most events"}})
}

fn new_event(stream: &str, n: usize) -> NewEvent {
    NewEvent::new(
        Workspace::parse("bench").unwrap(),
        Source::parse("/bench").unwrap(),
        EventType::parse("agent.memory.recorded.v1").unwrap(),
        StreamId::parse(stream).unwrap(),
        data(n),
    )
}

async fn raw_single(pool: &PgPool, writers: usize, per_writer: usize, tag: &str) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        let tag = tag.to_owned();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_writer {
                // One row, one transaction (autocommit).
                sqlx::query(RAW_INSERT)
                    .bind("bench")
                    .bind(format!("{tag}/{w}"))
                    .bind((n + 1) as i64)
                    .bind(uuid::Uuid::now_v7().to_string())
                    .bind("/bench")
                    .bind("agent.memory.recorded.v1")
                    .bind(data(n))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

async fn raw_batches(pool: &PgPool, batches: usize, size: usize) -> Duration {
    let start = Instant::now();
    for b in 0..batches {
        let stream = format!("rawbatch/{b}");
        let ids: Vec<String> = (0..size)
            .map(|_| uuid::Uuid::now_v7().to_string())
            .collect();
        sqlx::query(RAW_BATCH)
            .bind(vec!["bench"; size])
            .bind(vec![stream.as_str(); size])
            .bind((1..=size as i64).collect::<Vec<_>>())
            .bind(&ids)
            .bind(vec!["/bench"; size])
            .bind(vec!["agent.memory.recorded.v1"; size])
            .bind((0..size).map(data).collect::<Vec<_>>())
            .execute(pool)
            .await
            .unwrap();
    }
    start.elapsed()
}

async fn store_single(
    store: &EventStore,
    writers: usize,
    per_writer: usize,
    tag: &str,
) -> Duration {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        let stream = format!("{tag}/{w}");
        tasks.push(tokio::spawn(async move {
            for n in 0..per_writer {
                store.append(vec![new_event(&stream, n)]).await.unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    start.elapsed()
}

async fn store_batches(store: &EventStore, batches: usize, size: usize) -> Duration {
    let start = Instant::now();
    for b in 0..batches {
        let stream = format!("batch/{b}");
        let events = (0..size).map(|n| new_event(&stream, n)).collect();
        store.append(events).await.unwrap();
    }
    start.elapsed()
}

#[tokio::main]
async fn main() {
    let scale: usize = std::env::var("SY_BENCH_EVENTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6_400);
    let database = TempDatabase::create("sy_bench").await;
    let pool = database.pool(40).await;
    MIGRATOR.run(&pool).await.unwrap();
    // The raw limit: the same columns, the same indexes, no triggers, no checks.
    pool.execute("CREATE TABLE raw_events (LIKE events INCLUDING ALL)")
        .await
        .unwrap();
    let version: String = sqlx::query_scalar("SHOW server_version")
        .fetch_one(&pool)
        .await
        .unwrap();
    let settings: Vec<(String, String)> = sqlx::query_as(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync', 'synchronous_commit')",
    )
    .fetch_all(&pool)
    .await
    .unwrap();

    let catalog = Arc::new(Catalog::builtin().unwrap());
    let store = EventStore::new(pool.clone(), catalog, &StoreConfig::default());

    // Warm up connections and caches.
    raw_single(&pool, 32, 5, "warm").await;
    store_single(&store, 32, 5, "warm").await;

    let single = scale / 4;
    let per32 = scale / 32;
    let batches = scale / 100;
    let rows = [
        Row {
            path: "raw: 1-row INSERT per transaction, 1 connection",
            events: single,
            elapsed: raw_single(&pool, 1, single, "raw1").await,
        },
        Row {
            path: "switchyard: append 1 event, 1 writer",
            events: single,
            elapsed: store_single(&store, 1, single, "sy1").await,
        },
        Row {
            path: "raw: 1-row INSERT per transaction, 32 connections",
            events: per32 * 32,
            elapsed: raw_single(&pool, 32, per32, "raw32").await,
        },
        Row {
            path: "switchyard: append 1 event, 32 concurrent writers",
            events: per32 * 32,
            elapsed: store_single(&store, 32, per32, "sy32").await,
        },
        Row {
            path: "raw: 100-row INSERT … SELECT unnest",
            events: batches * 100,
            elapsed: raw_batches(&pool, batches, 100).await,
        },
        Row {
            path: "switchyard: append a 100-event batch",
            events: batches * 100,
            elapsed: store_batches(&store, batches, 100).await,
        },
    ];

    println!(
        "PostgreSQL {version}; {}",
        settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!();
    println!("| path | events | seconds | events/s | switchyard ÷ raw |");
    println!("| --- | ---: | ---: | ---: | ---: |");
    for pair in rows.chunks(2) {
        let (raw, ours) = (&pair[0], &pair[1]);
        println!(
            "| {} | {} | {:.2} | {:.0} | |",
            raw.path,
            raw.events,
            raw.elapsed.as_secs_f64(),
            raw.rate()
        );
        println!(
            "| {} | {} | {:.2} | {:.0} | **{:.2}×** |",
            ours.path,
            ours.events,
            ours.elapsed.as_secs_f64(),
            ours.rate(),
            ours.rate() / raw.rate()
        );
    }

    drop(store);
    pool.close().await;
    database.drop_now().await;
}
