//! Relay tests against a real PostgreSQL (a database per test) and real nats-servers: the
//! shared one with a stream and subject prefix of the test's own, or a server of the test's
//! own where the test kills it.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{sync::Arc, time::Duration};

use async_nats::jetstream;
use serde_json::json;
use sqlx::PgPool;
use switchyard_events::{Catalog, Cursor, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_relay::{Relay, RelayConfig};
use switchyard_store::{EventStore, ReadFilter, StoreConfig};
use switchyard_testkit::{NatsServer, shared_nats_url, unique};
use tokio_util::sync::CancellationToken;

fn store(pool: &PgPool) -> EventStore {
    EventStore::new(
        pool.clone(),
        Arc::new(Catalog::builtin().unwrap()),
        &StoreConfig::default(),
    )
}

fn config() -> RelayConfig {
    RelayConfig {
        stream: unique("T"),
        subject_prefix: unique("t"),
        batch: 50,
        reconcile_interval_ms: 200,
        standby_retry_ms: 100,
        ..RelayConfig::default()
    }
}

/// Appends `n` events over two workspaces and two types; returns them in the store's order.
async fn append(store: &EventStore, n: usize, tag: &str) {
    for i in 0..n {
        let workspace = if i % 2 == 0 { "alpha" } else { "beta" };
        let (ty, data) = if i % 3 == 0 {
            (
                "agent.memory.recorded.v1",
                json!({"agent": "t", "key": format!("{tag}{i}"), "value": i}),
            )
        } else {
            (
                "retrospective.trigger.v1",
                json!({"retrospective_id": format!("{tag}{i}"), "reason": "manual", "requested_by": "test"}),
            )
        };
        let event = NewEvent::new(
            Workspace::parse(workspace).unwrap(),
            Source::parse("/tests").unwrap(),
            EventType::parse(ty).unwrap(),
            StreamId::parse(&format!("s/{}", i % 7)).unwrap(),
            data,
        );
        store.append(vec![event]).await.unwrap();
    }
}

/// The global order of the store: the positions a reader sees.
async fn store_order(store: &EventStore) -> Vec<i64> {
    let mut cursor = Cursor::START;
    let mut positions = Vec::new();
    loop {
        let page = store
            .read_all(cursor, &ReadFilter::default(), 1000)
            .await
            .unwrap();
        if page.events.is_empty() {
            return positions;
        }
        positions.extend(page.events.iter().map(|e| e.position));
        cursor = page.next;
    }
}

/// Waits until the stream holds `n` messages; returns their `ce-sequence` headers in stream
/// order, and their subjects.
async fn stream_contents(client: &async_nats::Client, stream: &str, n: u64) -> Vec<(i64, String)> {
    let js = jetstream::new(client.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut s) = js.get_stream(stream).await {
            let info = s.info().await.unwrap();
            if info.state.messages >= n || tokio::time::Instant::now() > deadline {
                let mut out = Vec::new();
                for seq in info.state.first_sequence..=info.state.last_sequence {
                    let message = s.get_raw_message(seq).await.unwrap();
                    let position = message
                        .headers
                        .get("ce-sequence")
                        .unwrap()
                        .as_str()
                        .parse()
                        .unwrap();
                    out.push((position, message.subject.to_string()));
                }
                return out;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "stream {stream} never reached {n} messages"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn every_event_is_published_once_in_global_order(pool: PgPool) {
    let store = store(&pool);
    let client = async_nats::connect(shared_nats_url()).await.unwrap();
    let config = config();
    let relay = Relay::new(store.clone(), client.clone(), config.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(shutdown.clone()));

    append(&store, 240, "a").await;
    let published = stream_contents(&client, &config.stream, 240).await;
    let expected = store_order(&store).await;
    assert_eq!(
        published.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        expected,
        "once each, in global order"
    );

    // Subjects: <prefix>.<workspace>.<type>.
    let event = store.get(published[0].0).await.unwrap().unwrap();
    assert_eq!(
        published[0].1,
        format!("{}.{}.{}", config.subject_prefix, event.workspace, event.ty)
    );

    let status = relay.status(10_000).await.unwrap();
    assert_eq!(status.relayed, 240);
    assert_eq!(status.lag_events, 0);

    shutdown.cancel();
    task.await.unwrap();
    jetstream::new(client)
        .delete_stream(&config.stream)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn one_relay_is_active_and_a_standby_takes_over(pool: PgPool) {
    let store = store(&pool);
    let client = async_nats::connect(shared_nats_url()).await.unwrap();
    let config = config();
    let first = Relay::new(store.clone(), client.clone(), config.clone());
    let second = Relay::new(store.clone(), client.clone(), config.clone());
    let (stop_first, stop_second) = (CancellationToken::new(), CancellationToken::new());
    let first_task = tokio::spawn(first.clone().run(stop_first.clone()));
    let second_task = tokio::spawn(second.clone().run(stop_second.clone()));

    append(&store, 60, "b").await;
    stream_contents(&client, &config.stream, 60).await;
    assert!(
        first.is_active() ^ second.is_active(),
        "exactly one relay is active"
    );
    let (active_stop, active_task, standby) = if first.is_active() {
        (stop_first, first_task, second.clone())
    } else {
        (stop_second, second_task, first.clone())
    };

    // The active one stops; the standby takes the lock and carries on from the checkpoint.
    active_stop.cancel();
    active_task.await.unwrap();
    append(&store, 60, "c").await;
    let published = stream_contents(&client, &config.stream, 120).await;
    assert!(standby.is_active());
    assert_eq!(
        published.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        store_order(&store).await
    );

    jetstream::new(client)
        .delete_stream(&config.stream)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_deleted_stream_is_recreated_and_filled_again(pool: PgPool) {
    let store = store(&pool);
    let client = async_nats::connect(shared_nats_url()).await.unwrap();
    let config = config();
    let relay = Relay::new(store.clone(), client.clone(), config.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    append(&store, 80, "d").await;
    stream_contents(&client, &config.stream, 80).await;
    jetstream::new(client.clone())
        .delete_stream(&config.stream)
        .await
        .unwrap();
    append(&store, 20, "e").await;

    let published = stream_contents(&client, &config.stream, 100).await;
    assert_eq!(
        published.iter().map(|(p, _)| *p).collect::<Vec<_>>(),
        store_order(&store).await
    );

    shutdown.cancel();
    task.await.unwrap();
    jetstream::new(client)
        .delete_stream(&config.stream)
        .await
        .unwrap();
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn nats_killed_and_restarted_loses_nothing(pool: PgPool) {
    let mut nats = NatsServer::start().await;
    let store = store(&pool);
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(nats.url())
        .await
        .unwrap();
    let config = config();
    let relay = Relay::new(store.clone(), client.clone(), config.clone());
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(relay.run(shutdown.clone()));

    append(&store, 50, "f").await;
    stream_contents(&client, &config.stream, 50).await;

    // Appends go on while NATS is down: they depend on PostgreSQL only.
    nats.kill();
    append(&store, 50, "g").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    nats.restart().await;
    append(&store, 50, "h").await;

    let published = stream_contents(&client, &config.stream, 150).await;
    let positions: Vec<i64> = published.iter().map(|(p, _)| *p).collect();
    assert_eq!(positions.len(), 150, "nothing lost, nothing duplicated");
    let mut sorted = positions.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 150);
    let mut expected = store_order(&store).await;
    expected.sort_unstable();
    assert_eq!(sorted, expected);

    shutdown.cancel();
    task.await.unwrap();
}
