//! Event store tests against a real PostgreSQL: each test gets its own database
//! (`#[sqlx::test]`), migrated with the store's migrations.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

mod append;
mod concurrency;
mod read;

use std::sync::Arc;

use serde_json::json;
use sqlx::PgPool;
use switchyard_events::{Catalog, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_store::{EventStore, StoreConfig};

pub(crate) fn store(pool: &PgPool) -> EventStore {
    let catalog = Arc::new(Catalog::builtin().expect("built-in catalog"));
    EventStore::new(pool.clone(), catalog, &StoreConfig::default())
}

pub(crate) fn ws(name: &str) -> Workspace {
    Workspace::parse(name).unwrap()
}

/// A valid `agent.memory.recorded.v1` event on `stream`.
pub(crate) fn memory(workspace: &str, stream: &str, key: &str) -> NewEvent {
    NewEvent::new(
        ws(workspace),
        Source::parse("/tests").unwrap(),
        EventType::parse("agent.memory.recorded.v1").unwrap(),
        StreamId::parse(stream).unwrap(),
        json!({"agent": "tester", "key": key, "value": {"n": key}}),
    )
}

pub(crate) async fn count(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Reads from `after` until `n` events are visible. Visibility waits for every older
/// transaction in the whole PostgreSQL cluster, including other tests' held-open ones, so
/// tests poll (bounded) instead of expecting events at once.
pub(crate) async fn read_n(
    store: &EventStore,
    after: switchyard_events::Cursor,
    filter: &switchyard_store::ReadFilter,
    n: usize,
) -> switchyard_store::Page {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let page = store.read_all(after, filter, 1000).await.unwrap();
        if page.events.len() >= n || tokio::time::Instant::now() > deadline {
            return page;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
