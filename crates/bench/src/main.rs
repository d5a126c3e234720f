//! `switchyard-bench`: each Switchyard path measured next to the raw limit beneath it, in one
//! run, on the same machine, the same PostgreSQL and the same nats-server.
//!
//! It starts the real `switchyard serve` binary as a child process on a throwaway database
//! (dropped at the end), with a JetStream stream and subject prefix of its own, drives it over
//! HTTP with its own client (a pooled hyper client; one connection per concurrent request),
//! and prints a Markdown table of figures and ratios; `--write docs/benchmarks.md` puts the
//! table into that file between markers. `scripts/bench` builds and runs it.

mod echo;
mod load;
mod raw;
mod report;
mod server;

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use clap::{Parser, ValueEnum};
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor as _, PgPool, postgres::PgPoolOptions};
use switchyard_agent_runtime::{Agent, AgentRuntime, RuntimeConfig};
use switchyard_events::{Catalog, Cursor};
use switchyard_store::{EventStore, StoreConfig};
use tokio_util::sync::CancellationToken;

use load::{Figures, closed_loop, open_loop, progress};
use report::Report;
use server::{Http, Server, Setup};

const STRUCTURED: &str = "application/cloudevents+json";
const BATCH: &str = "application/cloudevents-batch+json";

/// Measures each Switchyard path next to the raw PostgreSQL or JetStream limit beneath it, and
/// prints the figures and ratios as a Markdown table.
///
/// Needs DATABASE_URL (a role that may create databases) and NATS_URL (JetStream on), like
/// `scripts/test`; starts the `switchyard` binary next to this one unless --server says which.
///
/// Examples:
///   scripts/bench                                   # build (release), run, print the table
///   scripts/bench --write docs/benchmarks.md        # and put it into the docs
///   switchyard-bench --quick --output json          # a short run, figures as JSON
#[derive(Debug, Parser)]
#[command(
    name = "switchyard-bench",
    version,
    about,
    long_about,
    verbatim_doc_comment
)]
struct Args {
    /// The `switchyard` binary to start (default: the one next to this binary).
    #[arg(long, value_name = "PATH")]
    server: Option<PathBuf>,
    /// Events appended by each append path (and rows by each raw insert path).
    #[arg(long, default_value_t = 20_000)]
    events: u64,
    /// Concurrent clients of the single-event append paths.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// Seconds each fixed-rate path runs.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Events in the store before the projection and read paths run.
    #[arg(long, default_value_t = 100_000)]
    fill: u64,
    /// A short run (a fifth of the events, 3 s per fixed-rate path, 20 000 events in the
    /// store): checks that everything works, not figures to quote.
    #[arg(long)]
    quick: bool,
    /// Put the table into this Markdown file, between `<!-- switchyard-bench:begin -->` and
    /// `<!-- switchyard-bench:end -->` (appended when the markers are missing).
    #[arg(long, value_name = "FILE")]
    write: Option<PathBuf>,
    /// Only these paths (repeat or separate with commas), to profile or compare one of them;
    /// the others are skipped. Not with --write: the docs keep whole runs.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "PATH",
        conflicts_with = "write"
    )]
    only: Vec<Phase>,
    /// How to print the result.
    #[arg(long, value_enum, default_value_t = Output::Text)]
    output: Output,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

/// The paths of the table, for --only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Phase {
    /// Single-event and 100-event batch appends, and their raw inserts.
    Append,
    /// Commit → JetStream ack, and raw JetStream publishes.
    Relay,
    /// Append → agent handled → its event committed.
    Agent,
    /// Projection rebuilds (fills the store first), and the raw ordered read.
    Rebuild,
    /// The API's projection list and the dashboard's pages (fills the store first).
    Read,
}

impl Args {
    fn runs(&self, phase: Phase) -> bool {
        self.only.is_empty() || self.only.contains(&phase)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    /// The Markdown table.
    Text,
    /// Every figure as one JSON document.
    Json,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if args.quick {
        args.events = (args.events / 5).max(100);
        args.seconds = args.seconds.min(3);
        args.fill = args.fill.min(20_000);
    }
    let admin_url = std::env::var("DATABASE_URL")
        .context("DATABASE_URL is not set (scripts/bench sets it; or `source .switchyard/env`)")?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let binary = match &args.server {
        Some(path) => path.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("the bench binary's directory")?
            .join("switchyard"),
    };
    if !binary.exists() {
        bail!(
            "{} does not exist: build it (`cargo build --release -p switchyard`) or pass --server",
            binary.display()
        );
    }

    let database = TempDatabase::create(&admin_url).await?;
    let outcome = run(&args, &binary, &database.url, &nats_url).await;
    database.drop_now().await?;
    let report = outcome?;

    match args.output {
        Output::Text => println!("{}", report.markdown()),
        Output::Json => println!("{}", serde_json::to_string_pretty(&report)?),
    }
    if let Some(file) = &args.write {
        report::write_into(file, &report.markdown())?;
        eprintln!("wrote the table into {}", file.display());
    }
    if !report.all_met() {
        eprintln!("some targets were missed (see the table)");
    }
    Ok(())
}

async fn run(
    args: &Args,
    binary: &std::path::Path,
    database_url: &str,
    nats_url: &str,
) -> anyhow::Result<Report> {
    let tag = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
    let events_dir = std::env::temp_dir().join(format!("switchyard-bench-{tag}"));
    server::write_schemas(&events_dir)?;
    let setup = Setup {
        database_url: database_url.to_owned(),
        nats_url: nats_url.to_owned(),
        stream: format!("BENCH{tag}"),
        prefix: format!("b{tag}"),
        events_dir: events_dir.clone(),
    };
    let nats = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connecting to NATS at {nats_url}"))?;
    let js = async_nats::jetstream::new(nats.clone());

    let server = Server::start(binary, &setup).await?;
    let result = measure(args, binary, &setup, &server, &nats, &js).await;
    server.stop().await;
    let _ = js.delete_stream(&setup.stream).await;
    let _ = js.delete_stream(format!("BENCHRAW{tag}")).await;
    let _ = std::fs::remove_dir_all(&events_dir);
    result
}

#[allow(clippy::too_many_lines)] // one phase after the other, in the order of the table
async fn measure(
    args: &Args,
    binary: &std::path::Path,
    setup: &Setup,
    server: &Server,
    nats: &async_nats::Client,
    js: &async_nats::jetstream::Context,
) -> anyhow::Result<Report> {
    let quiet = args.quiet;
    let http = Http::new(&server.base);
    // The raw paths' pool: no ping before each statement (sqlx's default), as plain as it gets.
    let pool = PgPoolOptions::new()
        .test_before_acquire(false)
        .max_connections(args.clients as u32 + 4)
        .connect(&setup.database_url)
        .await?;
    let mut report = Report::new(&pool, nats, binary, args).await?;

    http.ok(
        "POST",
        "/v1/workspaces",
        "application/json",
        Bytes::from(
            json!({"id": "bench", "name": "bench",
                   "repository": {"kind": "local", "path": std::env::temp_dir().join("switchyard-bench-repo")}})
            .to_string(),
        ),
    )
    .await
    .context("creating the bench workspace")?;
    raw::create_table(&pool).await?;

    if args.runs(Phase::Append) {
        // 1. Single-event appends, concurrent clients. Each event opens a stream of its own, as
        // each raw row does: concurrent appends to one stream without an expected version can
        // answer 503 "retry" when two transactions race for its next version.
        let bar = progress(quiet, args.events, "raw INSERT, 1 row/tx");
        let raw_single = raw::single_inserts(&pool, args.clients, args.events, &bar).await?;
        let bar = progress(quiet, args.events, "HTTP append, 1 event/request");
        let sy_single = {
            let http = http.clone();
            closed_loop(args.clients, args.events, 1, &bar, move |n| {
                let http = http.clone();
                async move { post_events(&http, &note_value(n, &format!("bench/single/{n}"))).await }
            })
            .await?
        };
        report.ratio(
            "single-event append via HTTP, {c} concurrent clients",
            args.clients,
            sy_single,
            "raw single-row INSERT per transaction, {c} connections",
            raw_single,
            1.0,
        );

        // 2. 100-event batches, one client.
        let batches = (args.events / 100).max(1);
        let bar = progress(quiet, batches * 100, "raw INSERT, 100 rows");
        let raw_batch = raw::batch_inserts(&pool, batches, 100, &bar).await?;
        let bar = progress(quiet, batches * 100, "HTTP append, 100-event batch");
        let sy_batch = {
            let http = http.clone();
            closed_loop(1, batches, 100, &bar, move |b| {
                let http = http.clone();
                async move {
                    let events: Vec<Value> = (0..100)
                        .map(|i| note_value(b * 100 + i, &format!("bench/batch/{b}")))
                        .collect();
                    post_events(&http, &Value::Array(events)).await
                }
            })
            .await?
        };
        report.ratio(
            "batch append (100 events) via HTTP",
            1,
            sy_batch,
            "raw 100-row INSERT … SELECT unnest",
            raw_batch,
            0.8,
        );
        let stored = raw::count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'bench.note.v1'",
        )
        .await?;
        let appended = args.events + batches * 100;
        if stored != appended as i64 {
            bail!("{appended} notes were appended and answered 2xx, but {stored} are stored");
        }
    }
    if args.runs(Phase::Relay) {
        // 3. Commit → JetStream (the relay), at a fixed rate; raw JetStream publishes beside it.
        // Each server path starts once the server has caught up with what came before it.
        settle(&http).await?;
        let relay = relay_latency(args, setup, &http, nats).await?;
        let raw_subject = format!("{}raw.note", setup.prefix);
        js.get_or_create_stream(async_nats::jetstream::stream::Config {
            name: format!("BENCHRAW{}", &setup.stream["BENCH".len()..]),
            subjects: vec![raw_subject.clone()],
            ..Default::default()
        })
        .await?;
        let bar = progress(quiet, 1_000 * args.seconds, "raw JetStream publish, 1000/s");
        let raw_js =
            raw::jetstream_at_rate(js, &raw_subject, 1_000, secs(args.seconds), &bar).await?;
        report.latency(
            "commit → JetStream ack (relay), 1 000 events/s",
            relay,
            Some(("raw JetStream publish → ack, 1 000/s", raw_js)),
            50.0,
        );
        let bar = progress(quiet, args.events, "raw JetStream, 256 in flight");
        let raw_js_max = raw::jetstream_max(js, &raw_subject, args.events, 256, &bar).await?;
        report.limit(
            "raw JetStream publish, 256 in flight (throughput limit)",
            raw_js_max,
        );
    }
    if args.runs(Phase::Agent) {
        // 4. Append → agent handled → its event committed.
        settle(&http).await?;
        let agent = agent_latency(args, setup, &http, nats).await?;
        report.latency(
            "append → agent handled → its event committed, 500 events/s",
            agent,
            None,
            100.0,
        );
    }
    // 5. Projection rebuild, with the store filled (the reads too look at a full store).
    if args.runs(Phase::Rebuild) || args.runs(Phase::Read) {
        fill(args, &http, &pool).await?;
        settle(&http).await?;
    }
    let total = raw::count(&pool, "SELECT count(*) FROM events").await?;
    if args.runs(Phase::Rebuild) {
        let raw_read = raw::ordered_read(&pool).await?;
        for projection in ["agent_state", "proposals"] {
            let (rebuilt, applied) = rebuild(binary, setup, projection, total).await?;
            report.rebuild(projection, total, applied, rebuilt, raw_read.clone());
        }
    }
    if args.runs(Phase::Read) {
        // 6. API read of a projection list.
        settle(&http).await?;
        let bar = progress(quiet, 200 * args.seconds, "GET proposals, 200/s");
        let reads = {
            let http = http.clone();
            open_loop(200, secs(args.seconds), &bar, move |_, due| {
                let http = http.clone();
                async move {
                    let body = http
                        .ok(
                            "GET",
                            "/v1/workspaces/bench/proposals?limit=50",
                            "application/json",
                            Bytes::new(),
                        )
                        .await?;
                    let elapsed = due.elapsed();
                    let page: Value = serde_json::from_slice(&body)?;
                    if page["proposals"].as_array().is_none_or(Vec::is_empty) {
                        bail!("the proposals list came back empty: {page}");
                    }
                    Ok(elapsed)
                }
            })
            .await?
        };
        report.latency(
            "API read of a projection list (50 proposals), 200 requests/s",
            reads,
            None,
            10.0,
        );

        // 7. The dashboard's pages, each as the browser loads it: its API requests at once.
        settle(&http).await?;
        for (page, figures) in
            dashboard_pages(&http, if args.quick { 20 } else { 200 }, quiet).await?
        {
            report.latency(
                &format!("Dashboard page `{page}` ({total} events in the store), one at a time"),
                figures,
                None,
                200.0,
            );
        }
    }
    let (rss, peak) = server.memory()?;
    report.memory(rss, peak, total);
    Ok(report)
}

/// Loads each dashboard page `rounds` times, one load at a time; a load is every API request
/// the page makes, sent at once as the page does, and lasts until the last answer.
async fn dashboard_pages(
    http: &Http,
    rounds: u64,
    quiet: bool,
) -> anyhow::Result<Vec<(&'static str, Figures)>> {
    let get = |uri: String| {
        let http = http.clone();
        async move {
            let body = http
                .ok("GET", &uri, "application/json", Bytes::new())
                .await?;
            anyhow::Ok(body)
        }
    };
    let json = |b: Bytes| -> anyhow::Result<Value> { Ok(serde_json::from_slice(&b)?) };
    let ws = "/v1/workspaces/bench";
    let newest = json(get(format!("{ws}/timeline?limit=1")).await?)?;
    let event = &newest["events"][0];
    let sequence = event["sequence"]
        .as_i64()
        .context("an event in the timeline")?;
    let correlation = event["correlationid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let proposals = json(get(format!("{ws}/proposals?limit=1")).await?)?;
    let proposal = proposals["proposals"][0]["id"]
        .as_str()
        .context("a proposal")?
        .to_owned();
    let pages: Vec<(&'static str, Vec<String>)> = vec![
        (
            "/ (the page itself)",
            vec![
                "/".into(),
                "/ui/app.js".into(),
                "/v1/session".into(),
                "/v1/workspaces".into(),
            ],
        ),
        (
            "timeline",
            vec![
                "/v1/schemas".into(),
                format!("{ws}/agents"),
                format!("{ws}/timeline?limit=50"),
            ],
        ),
        (
            "timeline, one rare type",
            vec![format!("{ws}/timeline?limit=50&type=proposal.created.v1")],
        ),
        (
            "timeline, one source",
            vec![format!("{ws}/timeline?limit=50&source=/api")],
        ),
        (
            "timeline, one correlation",
            vec![format!("{ws}/timeline?limit=50&correlation={correlation}")],
        ),
        (
            "timeline, 20th page back",
            vec![format!(
                "{ws}/timeline?limit=50&before={}",
                sequence - 1_000
            )],
        ),
        (
            "event and its chain",
            vec![format!("{ws}/timeline/{sequence}")],
        ),
        (
            "proposals",
            vec![
                format!("{ws}/proposals?status=pending&limit=200"),
                format!("{ws}/proposals?limit=100"),
            ],
        ),
        (
            "proposal with diff",
            vec![
                format!("{ws}/proposals/{proposal}"),
                format!("{ws}/proposals/{proposal}/diff"),
            ],
        ),
        (
            "agents",
            vec![format!("{ws}/agents"), "/v1/ops/status".into()],
        ),
        (
            "agent",
            vec![format!("{ws}/agents/strategy"), "/v1/ops/status".into()],
        ),
        ("artifacts", vec![format!("{ws}/artifacts")]),
        (
            "retrospectives",
            vec![
                format!("{ws}/retrospectives?limit=50"),
                format!("{ws}/metrics"),
            ],
        ),
        ("workflows", vec![format!("{ws}/plans?limit=100")]),
        (
            "ops",
            vec!["/v1/ops/status".into(), "/v1/ops/dead-letters".into()],
        ),
    ];
    let mut out = Vec::new();
    for (page, uris) in pages {
        let bar = progress(quiet, rounds, &format!("dashboard: {page}"));
        let started = Instant::now();
        let mut samples = Vec::with_capacity(rounds as usize);
        for _ in 0..rounds {
            let load = Instant::now();
            futures::future::try_join_all(uris.iter().map(|u| get(u.clone()))).await?;
            samples.push(load.elapsed());
            bar.inc(1);
        }
        bar.finish_and_clear();
        out.push((page, Figures::new(rounds, started.elapsed(), samples)));
    }
    Ok(out)
}

/// Waits until the server is idle: the relay and every projection caught up with the store
/// (`GET /v1/ops/status`), so that a path is not measured against the backlog of the last.
async fn settle(http: &Http) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let status: Value = serde_json::from_slice(
            &http
                .ok("GET", "/v1/ops/status", "application/json", Bytes::new())
                .await?,
        )?;
        let relay = status["relay"]["status"]["lag_events"].as_i64();
        let projections = status["projections"].as_array().map(|all| {
            all.iter()
                .filter_map(|p| p["lag_events"].as_i64())
                .sum::<i64>()
        });
        if relay == Some(0) && projections == Some(0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the server did not catch up within 600 s: {status}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s.max(1))
}

fn note_value(n: u64, subject: &str) -> Value {
    json!({
        "specversion": "1.0",
        "id": uuid::Uuid::now_v7().to_string(),
        "source": "/bench",
        "type": "bench.note.v1",
        "subject": subject,
        "data": {"n": n, "text": "a small payload, like most events"},
    })
}

/// Appends through the CloudEvents endpoint of the bench workspace: one event (structured
/// mode) or an array of them (batch mode).
async fn post_events(http: &Http, events: &Value) -> anyhow::Result<()> {
    let content_type = if events.is_array() { BATCH } else { STRUCTURED };
    http.ok(
        "POST",
        "/v1/workspaces/bench/events",
        content_type,
        Bytes::from(serde_json::to_vec(events)?),
    )
    .await?;
    Ok(())
}

/// Appends notes at 1 000/s and times each from its 2xx (committed) to its message on the
/// stream's subject (published by the relay, stored and acknowledged by JetStream: a core
/// subscriber sees a JetStream message once the stream has stored it).
async fn relay_latency(
    args: &Args,
    setup: &Setup,
    http: &Http,
    nats: &async_nats::Client,
) -> anyhow::Result<Figures> {
    use futures::StreamExt as _;
    use std::collections::HashMap;
    use std::sync::Mutex;

    let seen: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut subscriber = nats
        .subscribe(format!("{}.bench.bench.note.v1", setup.prefix))
        .await?;
    let watcher = {
        let seen = Arc::clone(&seen);
        tokio::spawn(async move {
            while let Some(message) = subscriber.next().await {
                let at = Instant::now();
                let id = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get("ce-id"))
                    .map(|v| v.as_str().to_owned());
                if let (Some(id), Ok(mut seen)) = (id, seen.lock()) {
                    seen.insert(id, at);
                }
            }
        })
    };
    let bar = progress(args.quiet, 1_000 * args.seconds, "relay: append at 1000/s");
    let appended: Arc<Mutex<Vec<(String, Instant)>>> = Arc::default();
    let offered = {
        let (http, appended) = (http.clone(), Arc::clone(&appended));
        open_loop(1_000, secs(args.seconds), &bar, move |n, due| {
            let (http, appended) = (http.clone(), Arc::clone(&appended));
            async move {
                let event = note_value(n, &format!("bench/relay/{n}"));
                let id = event["id"].as_str().unwrap_or_default().to_owned();
                post_events(&http, &event).await?;
                if let Ok(mut a) = appended.lock() {
                    a.push((id, Instant::now()));
                }
                Ok(due.elapsed())
            }
        })
        .await?
    };
    // Every note reaches the stream; give the relay up to 30 s for the last.
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples = loop {
        let done = {
            let (appended, seen) = (
                appended.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
                seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
            );
            let missing = appended
                .iter()
                .filter(|(id, _)| !seen.contains_key(id))
                .count();
            if missing == 0 {
                Some(
                    appended
                        .iter()
                        .filter_map(|(id, at)| {
                            seen.get(id).map(|s| s.saturating_duration_since(*at))
                        })
                        .collect::<Vec<_>>(),
                )
            } else if Instant::now() > deadline {
                bail!(
                    "{missing} of {} relayed notes never reached JetStream",
                    appended.len()
                );
            } else {
                None
            }
        };
        if let Some(samples) = done {
            break samples;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    watcher.abort();
    Ok(Figures::new(
        offered.count,
        Duration::from_secs_f64(offered.seconds),
        samples,
    ))
}

/// Runs the echo agent on the real runtime (in this process, on the server's stream), pings
/// it at 500/s over HTTP and times each ping from when it was due to when its pong was
/// committed and readable.
async fn agent_latency(
    args: &Args,
    setup: &Setup,
    http: &Http,
    nats: &async_nats::Client,
) -> anyhow::Result<Figures> {
    let catalog = Catalog::load(Some(&setup.events_dir))?;
    let pool = switchyard_store::pool_options()
        .max_connections(24)
        .connect(&setup.database_url)
        .await?;
    let store = EventStore::new(pool, Arc::new(catalog), &StoreConfig::default());
    let shutdown = CancellationToken::new();
    let runtime = AgentRuntime::new(
        store.clone(),
        nats.clone(),
        &setup.stream,
        &setup.prefix,
        RuntimeConfig {
            concurrency: 16,
            ..RuntimeConfig::default()
        },
        vec![Arc::new(echo::Echo::new()?) as Arc<dyn Agent>],
    );
    runtime.register().await?;
    tokio::spawn(runtime.run(shutdown.clone()));
    let waiters: echo::Waiters = Arc::default();
    let watcher = tokio::spawn(echo::watch(
        store,
        Cursor::START,
        Arc::clone(&waiters),
        shutdown.clone(),
    ));

    let ping = {
        let (http, waiters) = (http.clone(), Arc::clone(&waiters));
        move |n: u64, due: Instant| {
            let (http, waiters) = (http.clone(), Arc::clone(&waiters));
            async move {
                let id = uuid::Uuid::now_v7().to_string();
                let (tx, rx) = tokio::sync::oneshot::channel();
                if let Ok(mut w) = waiters.lock() {
                    w.insert(id.clone(), tx);
                }
                let event = json!({
                    "specversion": "1.0", "id": id, "source": "/bench", "type": "bench.ping.v1",
                    "subject": format!("bench/ping/{n}"), "data": {"n": n},
                });
                post_events(&http, &event).await?;
                let seen = tokio::time::timeout(Duration::from_secs(60), rx)
                    .await
                    .with_context(|| format!("no pong for ping {id} within 60 s"))??;
                Ok(seen.saturating_duration_since(due))
            }
        }
    };
    // Warm up: the consumer exists and the first round trip is done before timing.
    ping(0, Instant::now()).await?;
    let bar = progress(args.quiet, 500 * args.seconds, "agent: ping at 500/s");
    let figures = open_loop(500, secs(args.seconds), &bar, ping).await;
    shutdown.cancel();
    let _ = watcher.await;
    figures
}

/// Fills the store up to `args.fill` events: agent memory records (which the `agent_state`
/// projection applies), notes (which every projection skips), and 500 proposals with their
/// events (which the `proposals` projection applies and the read path lists).
async fn fill(args: &Args, http: &Http, pool: &PgPool) -> anyhow::Result<()> {
    let proposals = 500u64;
    let bar = progress(args.quiet, proposals, "fill: proposals");
    {
        let http = http.clone();
        closed_loop(8, proposals, 1, &bar, move |n| {
            let http = http.clone();
            async move {
                let body = json!({
                    "title": format!("Fix dead link #{n}"),
                    "description": "The link to the guide points at a moved page.",
                    "changes": [{"path": format!("docs/page-{n}.md"), "action": "modify",
                                 "content": format!("# Page {n}\n\nSee [the guide](guide.md).\n")}],
                    "rationale": "bench",
                });
                http.ok(
                    "POST",
                    "/v1/workspaces/bench/proposals",
                    "application/json",
                    Bytes::from(body.to_string()),
                )
                .await?;
                Ok(())
            }
        })
        .await?;
    }
    let now = raw::count(pool, "SELECT count(*) FROM events").await?;
    let missing = args.fill.saturating_sub(now as u64);
    let batches = missing.div_ceil(1_000);
    // One batch at a time: the batches share streams (memory keys), and concurrent appends to
    // one stream without an expected version may be refused with 503 "retry".
    let bar = progress(args.quiet, batches * 1_000, "fill: events");
    let http = http.clone();
    closed_loop(1, batches, 1_000, &bar, move |b| {
        let http = http.clone();
        async move {
            let events: Vec<Value> = (0..1_000u64)
                .map(|i| {
                    let n = b * 1_000 + i;
                    if n % 2 == 0 {
                        note_value(n, &format!("bench/fill/{}", n % 1_000))
                    } else {
                        let agent = format!("agent-{}", n % 20);
                        json!({
                            "specversion": "1.0",
                            "id": uuid::Uuid::now_v7().to_string(),
                            "source": "/bench",
                            "type": "agent.memory.recorded.v1",
                            "subject": format!("agent/{agent}/memory/k{}", n % 500),
                            "data": {"agent": agent, "key": format!("k{}", n % 500),
                                     "value": {"n": n, "note": "remembered"}},
                        })
                    }
                })
                .collect();
            post_events(&http, &Value::Array(events)).await
        }
    })
    .await?;
    Ok(())
}

/// `switchyard projections rebuild <name> --output json`, on the bench's database of `total`
/// events: the figures over all of them (what the rebuild went through), and how many it
/// applied.
async fn rebuild(
    binary: &std::path::Path,
    setup: &Setup,
    projection: &str,
    total: i64,
) -> anyhow::Result<(Figures, u64)> {
    let output = tokio::process::Command::new(binary)
        .args(["projections", "rebuild", projection, "--output", "json"])
        .env("DATABASE_URL", &setup.database_url)
        .env("NATS_URL", &setup.nats_url)
        .env("SWITCHYARD_EVENTS_DIR", &setup.events_dir)
        .env("RUST_LOG", "warn")
        .output()
        .await?;
    if !output.status.success() {
        bail!(
            "rebuilding {projection} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let result: Value = serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "the rebuild printed no JSON: {}",
            String::from_utf8_lossy(&output.stdout)
        )
    })?;
    let read = result["read"]
        .as_u64()
        .context("no `read` in the rebuild's JSON")?;
    let seconds = result["seconds"]
        .as_f64()
        .context("no `seconds` in the rebuild's JSON")?;
    let figures = Figures::new(
        u64::try_from(total).unwrap_or_default(),
        Duration::from_secs_f64(seconds),
        Vec::new(),
    );
    Ok((figures, read))
}

/// A database of the bench's own next to DATABASE_URL's, dropped at the end.
struct TempDatabase {
    admin_url: String,
    name: String,
    url: String,
}

impl TempDatabase {
    async fn create(admin_url: &str) -> anyhow::Result<Self> {
        let name = format!("sy_bench_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(admin_url)
            .await
            .context("connecting to DATABASE_URL")?;
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .context("creating the bench's database (the role needs CREATEDB)")?;
        let (base, query) = admin_url
            .split_once('?')
            .map_or((admin_url, None), |(b, q)| (b, Some(q)));
        let server = base.rsplit_once('/').map_or(base, |(server, _)| server);
        let url = match query {
            Some(q) => format!("{server}/{name}?{q}"),
            None => format!("{server}/{name}"),
        };
        Ok(Self {
            admin_url: admin_url.to_owned(),
            name,
            url,
        })
    }

    async fn drop_now(self) -> anyhow::Result<()> {
        let mut admin = sqlx::PgConnection::connect(&self.admin_url).await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
            .await?;
        Ok(())
    }
}
