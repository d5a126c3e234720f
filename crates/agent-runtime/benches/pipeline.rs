//! Latency of the whole path: append → relay → JetStream → agent handled → the agent's event
//! committed, at a fixed rate, and the highest rate the path sustains.
//!
//! ```text
//! DATABASE_URL=… NATS_URL=… cargo bench -p switchyard-agent-runtime --bench pipeline
//! ```
//!
//! Real PostgreSQL (a throwaway database), the real nats-server (a stream of its own), the
//! real relay and runtime, and an agent that answers each `retrospective.trigger.v1` with a
//! `retrospective.completed.v1`. `SY_BENCH_RATE` (default 500/s) and `SY_BENCH_SECONDS`
//! (default 10) set the fixed-rate phase.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that fails should stop loudly

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use futures::{StreamExt as _, future::BoxFuture};
use serde_json::json;
use switchyard_agent_runtime::{
    Agent, AgentRuntime, Context, HandlerError, Manifest, RuntimeConfig,
};
use switchyard_events::{
    Catalog, Cursor, EventType, NewEvent, RecordedEvent, Source, StreamId, Workspace,
};
use switchyard_relay::{Relay, RelayConfig};
use switchyard_store::{EventStore, ReadFilter, StoreConfig, Wakeups};
use switchyard_testkit::TempDatabase;
use tokio_util::sync::CancellationToken;

struct Answer(Manifest);

impl Agent for Answer {
    fn manifest(&self) -> &Manifest {
        &self.0
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = event.data["retrospective_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            ctx.emit(
                "retrospective.completed.v1",
                &format!("retrospective/{id}"),
                json!({"retrospective_id": id, "metrics": {}, "insights": [], "action_items": []}),
            )
        })
    }
}

fn trigger(id: &str) -> NewEvent {
    NewEvent::new(
        Workspace::parse("bench").unwrap(),
        Source::parse("/bench").unwrap(),
        EventType::parse("retrospective.trigger.v1").unwrap(),
        StreamId::parse(&format!("retrospective/{id}")).unwrap(),
        json!({"retrospective_id": id, "reason": "manual", "requested_by": "bench"}),
    )
}

fn percentiles(mut samples: Vec<f64>) -> (f64, f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let at = |p: f64| samples[((samples.len() as f64 - 1.0) * p).round() as usize];
    (at(0.50), at(0.95), at(0.99), *samples.last().unwrap())
}

/// Times when things were seen, by retrospective id.
#[derive(Default)]
struct Seen {
    appended: HashMap<String, Instant>,
    published: HashMap<String, Instant>,
    completed: HashMap<String, Instant>,
}

#[tokio::main]
async fn main() {
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let rate: u64 = std::env::var("SY_BENCH_RATE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let seconds: u64 = std::env::var("SY_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10);

    let database = TempDatabase::create("sy_bench").await;
    let pool = database.pool(24).await;
    switchyard_store::MIGRATOR.run(&pool).await.unwrap();
    let store = EventStore::new(
        pool.clone(),
        Arc::new(Catalog::builtin().unwrap()),
        &StoreConfig::default(),
    );
    let client = async_nats::connect(&nats_url).await.unwrap();
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_owned();
    let relay_config = RelayConfig {
        stream: format!("BENCH{tag}"),
        subject_prefix: format!("b{tag}"),
        ..RelayConfig::default()
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(
        Relay::new(store.clone(), client.clone(), relay_config.clone()).run(shutdown.clone()),
    );
    let agent = Answer(Manifest {
        produces: Vec::new(),
        consumes: Vec::new(),
        name: "answer".into(),
        version: "1".into(),
        capabilities: vec![],
        subscribes: vec![EventType::parse("retrospective.trigger.v1").unwrap()],
        emits: vec![EventType::parse("retrospective.completed.v1").unwrap()],
    });
    let runtime = AgentRuntime::new(
        store.clone(),
        client.clone(),
        &relay_config.stream,
        &relay_config.subject_prefix,
        RuntimeConfig {
            concurrency: 16,
            ..RuntimeConfig::default()
        },
        vec![Arc::new(agent) as Arc<dyn Agent>],
    );
    tokio::spawn(runtime.run(shutdown.clone()));

    let seen = Arc::new(Mutex::new(Seen::default()));
    // When the relay's message reaches NATS subscribers (published and stored).
    {
        let seen = Arc::clone(&seen);
        let mut sub = client
            .subscribe(format!(
                "{}.*.retrospective.trigger.v1",
                relay_config.subject_prefix
            ))
            .await
            .unwrap();
        tokio::spawn(async move {
            while let Some(message) = sub.next().await {
                let now = Instant::now();
                if let Ok(body) = serde_json::from_slice::<serde_json::Value>(&message.payload)
                    && let Some(id) = body["data"]["retrospective_id"].as_str()
                {
                    seen.lock().unwrap().published.insert(id.to_owned(), now);
                }
            }
        });
    }
    // When the agent's answer is committed and visible to a reader of the store.
    {
        let seen = Arc::clone(&seen);
        let store = store.clone();
        tokio::spawn(async move {
            let mut wakeups = Wakeups::listen(&store).await.unwrap();
            let filter = ReadFilter {
                types: None,
                or_source_prefix: None,
                workspace: None,
                ty: Some(EventType::parse("retrospective.completed.v1").unwrap()),
            };
            let mut cursor = Cursor::START;
            loop {
                let Ok(page) = store.read_all(cursor, &filter, 1000).await else {
                    return; // the pool closed: the run is over
                };
                let now = Instant::now();
                {
                    let mut seen = seen.lock().unwrap();
                    for e in &page.events {
                        seen.completed.insert(
                            e.data["retrospective_id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            now,
                        );
                    }
                }
                cursor = page.next;
                if page.events.is_empty() {
                    wakeups.wait(Duration::from_millis(50)).await;
                }
            }
        });
    }
    // Warm up: consumer created, connections open.
    for i in 0..50 {
        store
            .append(vec![trigger(&format!("warm{i}"))])
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Fixed rate.
    let total = rate * seconds;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    let mut appends = Vec::new();
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let store = store.clone();
        let seen = Arc::clone(&seen);
        appends.push(tokio::spawn(async move {
            let id = format!("f{i}");
            store.append(vec![trigger(&id)]).await.unwrap();
            seen.lock().unwrap().appended.insert(id, Instant::now());
        }));
    }
    for a in appends {
        a.await.unwrap();
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    wait_all(&seen, "f", total).await;
    let (relay_ms, e2e_ms) = latencies(&seen, "f", total);

    // Highest sustained rate: 64 appenders as fast as they go, until all answers committed.
    let burst: u64 = 10_000;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..64u64 {
        let store = store.clone();
        let seen = Arc::clone(&seen);
        tasks.push(tokio::spawn(async move {
            for i in (w..burst).step_by(64) {
                let id = format!("m{i}");
                store.append(vec![trigger(&id)]).await.unwrap();
                seen.lock().unwrap().appended.insert(id, Instant::now());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let appended_in = start.elapsed().as_secs_f64();
    wait_all(&seen, "m", burst).await;
    let done_in = start.elapsed().as_secs_f64();

    let (r50, r95, r99, rmax) = percentiles(relay_ms);
    let (e50, e95, e99, emax) = percentiles(e2e_ms);
    println!("fixed rate: {rate}/s for {seconds} s ({total} events, achieved {achieved:.0}/s)");
    println!();
    println!("| path | p50 ms | p95 ms | p99 ms | max ms | target |");
    println!("| --- | ---: | ---: | ---: | ---: | --- |");
    println!(
        "| commit → JetStream (relay) | {r50:.1} | {r95:.1} | {r99:.1} | {rmax:.1} | p99 ≤ 50 ms |"
    );
    println!(
        "| append → agent's event committed | {e50:.1} | {e95:.1} | {e99:.1} | {emax:.1} | p99 ≤ 100 ms |"
    );
    println!();
    println!(
        "sustained: {burst} triggers appended by 64 writers in {appended_in:.2} s; all {burst} answers committed after {done_in:.2} s = {:.0} triggers/s end to end",
        burst as f64 / done_in
    );

    shutdown.cancel();
    let _ = async_nats::jetstream::new(client)
        .delete_stream(&relay_config.stream)
        .await;
    pool.close().await;
    database.drop_now().await;
}

async fn wait_all(seen: &Arc<Mutex<Seen>>, prefix: &str, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let done = seen
            .lock()
            .unwrap()
            .completed
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count() as u64;
        if done >= n {
            return;
        }
        assert!(Instant::now() < deadline, "only {done} of {n} answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn latencies(seen: &Arc<Mutex<Seen>>, prefix: &str, n: u64) -> (Vec<f64>, Vec<f64>) {
    let seen = seen.lock().unwrap();
    let (mut relay, mut e2e) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = format!("{prefix}{i}");
        let appended = seen.appended[&id];
        if let Some(published) = seen.published.get(&id) {
            relay.push(published.saturating_duration_since(appended).as_secs_f64() * 1000.0);
        }
        e2e.push(
            seen.completed[&id]
                .saturating_duration_since(appended)
                .as_secs_f64()
                * 1000.0,
        );
    }
    (relay, e2e)
}
