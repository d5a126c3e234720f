//! How fast `POST /v1/github/webhook` answers: signature check, JSON parse, mapping, and the
//! transaction that records the delivery with its events. Run on a throwaway database:
//!
//! ```text
//! DATABASE_URL=postgres://… cargo bench -p switchyard-http-api --bench webhook
//! ```
//!
//! The router is called in-process (no socket, no HTTP parsing): the figures are the route's
//! own cost, which is what GitHub's 10-second budget is spent on. `SY_BENCH_DELIVERIES` scales
//! the runs (default 4 000).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark that fails should stop loudly

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, body::Body, http::Request};
use switchyard_events::Catalog;
use switchyard_http_api::{ApiConfig, AppState, WebhookSecret, router};
use switchyard_store::{EventStore, MIGRATOR, StoreConfig};
use switchyard_testkit::{TempDatabase, sign};
use tower::ServiceExt as _;

const SECRET: &str = "bench secret";

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

async fn deliver(app: &Router, body: &[u8], signature: &str, delivery: &str) -> u16 {
    let request = Request::post("/v1/github/webhook")
        .header("content-type", "application/json")
        .header("x-github-event", "pull_request")
        .header("x-github-delivery", delivery)
        .header("x-hub-signature-256", signature)
        .body(Body::from(body.to_vec()))
        .unwrap();
    app.clone()
        .oneshot(request)
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// `total` deliveries from `clients` concurrent clients; `fresh` picks new delivery ids, else
/// every delivery repeats one already processed. Returns (elapsed, sorted latencies).
async fn run(
    app: &Router,
    body: &Arc<Vec<u8>>,
    clients: usize,
    total: usize,
    fresh: bool,
) -> (Duration, Vec<Duration>) {
    let signature = Arc::new(sign(SECRET.as_bytes(), body));
    let repeated = uuid::Uuid::new_v4().to_string();
    if !fresh {
        assert_eq!(deliver(app, body, &signature, &repeated).await, 202);
    }
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (app, body, signature, repeated) = (
            app.clone(),
            Arc::clone(body),
            Arc::clone(&signature),
            repeated.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(total / clients);
            for _ in 0..total / clients {
                let id = if fresh {
                    uuid::Uuid::new_v4().to_string()
                } else {
                    repeated.clone()
                };
                let t = Instant::now();
                let status = deliver(&app, &body, &signature, &id).await;
                latencies.push(t.elapsed());
                assert_eq!(status, if fresh { 202 } else { 200 });
            }
            latencies
        }));
    }
    let mut all = Vec::with_capacity(total);
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    let elapsed = start.elapsed();
    all.sort();
    (elapsed, all)
}

#[tokio::main]
async fn main() {
    let total: usize = std::env::var("SY_BENCH_DELIVERIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4_000);
    let database = TempDatabase::create("sy_bench_webhook").await;
    let pool = database.pool(40).await;
    MIGRATOR.run(&pool).await.unwrap();
    let store = EventStore::new(
        pool.clone(),
        Arc::new(Catalog::builtin().unwrap()),
        &StoreConfig::default(),
    );
    let app = router(
        AppState::new(store, None, ApiConfig::default())
            .with_webhook_secret(WebhookSecret::new(SECRET.to_owned().into())),
    );
    sqlx::query(
        "INSERT INTO events (workspace, stream_id, stream_version, id, source, type, time, data, correlation_id)
         VALUES ('bench', 'workspace', 1, 'w', '/api', 'workspace.created.v1', now(),
                 '{\"id\":\"bench\",\"name\":\"bench\",\"repository\":{\"kind\":\"github\",\"owner\":\"acme\",\"repo\":\"widgets\"}}', 'w')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let body = Arc::new(
        std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/api/fixtures/github/pull_request.json"
        ))
        .unwrap(),
    );

    println!("| run | deliveries | clients | deliveries/s | p50 ms | p95 ms | p99 ms | max ms |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (name, clients, n, fresh) in [
        ("new deliveries", 1, total / 4, true),
        ("new deliveries", 32, total, true),
        ("redeliveries (duplicates)", 32, total, false),
    ] {
        let (elapsed, latencies) = run(&app, &body, clients, n, fresh).await;
        println!(
            "| {name} ({} KiB payload) | {} | {clients} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} |",
            body.len() / 1024,
            latencies.len(),
            latencies.len() as f64 / elapsed.as_secs_f64(),
            percentile(&latencies, 0.50),
            percentile(&latencies, 0.95),
            percentile(&latencies, 0.99),
            latencies.last().map_or(0.0, |d| d.as_secs_f64() * 1e3),
        );
    }
    let stored: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE type = 'github.pull_request.v1'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let expected = (total / 4 + total - total % 32 + 1) as i64;
    println!("\nstored github.pull_request.v1 events: {stored} (expected {expected})");
    assert_eq!(
        stored, expected,
        "every new delivery once, no duplicate stored"
    );
    pool.close().await;
    database.drop_now().await;
}
