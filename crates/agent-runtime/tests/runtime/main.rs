//! Agent runtime tests: real PostgreSQL (a database per test), the real nats-server with a
//! stream and subject prefix of the test's own, and the real relay in between.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures::future::BoxFuture;
use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_agent_runtime::{
    Agent, AgentRuntime, Context, HandlerError, Manifest, RuntimeConfig, WorkContext,
    consumer_name, ensure_consumer,
};
use switchyard_events::{
    Catalog, EventType, ExpectedVersion, NewEvent, RecordedEvent, Source, StreamId, Workspace,
};
use switchyard_relay::{Relay, RelayConfig};
use switchyard_store::{EventStore, StoreConfig};
use switchyard_testkit::{NatsServer, shared_nats_url, unique};
use tokio_util::sync::CancellationToken;

/// The manifest of a test agent `name` that subscribes to `retrospective.trigger.v1` and
/// emits `retrospective.completed.v1`.
fn trigger_to_completed(name: &str) -> Manifest {
    Manifest {
        produces: Vec::new(),
        consumes: Vec::new(),
        name: name.into(),
        version: "1.0.0".into(),
        capabilities: vec!["testing".into()],
        subscribes: vec![EventType::parse("retrospective.trigger.v1").unwrap()],
        emits: vec![EventType::parse("retrospective.completed.v1").unwrap()],
    }
}

/// Answers each `retrospective.trigger.v1` with a `retrospective.completed.v1`; fails on
/// triggers whose id starts with `poison` until it is fixed; tries to emit an undeclared type
/// for ids starting with `rogue`.
struct Echo {
    manifest: Manifest,
    fixed: AtomicBool,
    handled: AtomicUsize,
}

impl Echo {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            manifest: trigger_to_completed("echo"),
            fixed: AtomicBool::new(false),
            handled: AtomicUsize::new(0),
        })
    }
}

impl Agent for Echo {
    fn manifest(&self) -> &Manifest {
        &self.manifest
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
            if id.starts_with("poison") && !self.fixed.load(Ordering::SeqCst) {
                return Err(HandlerError::new("cannot digest this one"));
            }
            if id.starts_with("rogue") {
                ctx.emit("proposal.approved.v1", "proposal/x", json!({}))?;
            }
            let key = format!("seen-{id}");
            ctx.remember(&key, json!(true))?;
            if ctx.recall(&key).await? != Some(json!(true)) {
                return Err(HandlerError::new("recall lost what was just remembered"));
            }
            ctx.emit(
                "retrospective.completed.v1",
                &format!("retrospective/{id}"),
                json!({"retrospective_id": id, "metrics": {}, "insights": [], "action_items": []}),
            )?;
            self.handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

struct Setup {
    store: EventStore,
    client: async_nats::Client,
    relay: RelayConfig,
    shutdown: CancellationToken,
}

impl Setup {
    async fn new(pool: &PgPool) -> Self {
        Self::on(pool, &shared_nats_url()).await
    }

    async fn on(pool: &PgPool, nats_url: &str) -> Self {
        let store = EventStore::new(
            pool.clone(),
            Arc::new(Catalog::builtin().unwrap()),
            &StoreConfig::default(),
        );
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect(nats_url)
            .await
            .unwrap();
        let relay = RelayConfig {
            stream: unique("T"),
            subject_prefix: unique("t"),
            reconcile_interval_ms: 200,
            ..RelayConfig::default()
        };
        let shutdown = CancellationToken::new();
        tokio::spawn(
            Relay::new(store.clone(), client.clone(), relay.clone()).run(shutdown.clone()),
        );
        // The relay creates the stream; consumers need it.
        let js = async_nats::jetstream::new(client.clone());
        for _ in 0..100 {
            if js.get_stream(&relay.stream).await.is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Self {
            store,
            client,
            relay,
            shutdown,
        }
    }

    fn runtime(&self, agent: Arc<Echo>, config: RuntimeConfig) -> AgentRuntime {
        self.runtime_of(agent, config)
    }

    fn runtime_of(&self, agent: Arc<dyn Agent>, config: RuntimeConfig) -> AgentRuntime {
        AgentRuntime::new(
            self.store.clone(),
            self.client.clone(),
            &self.relay.stream,
            &self.relay.subject_prefix,
            config,
            vec![agent],
        )
    }

    async fn trigger(&self, id: &str) -> String {
        let event = NewEvent::new(
            Workspace::parse("demo").unwrap(),
            Source::parse("/tests").unwrap(),
            EventType::parse("retrospective.trigger.v1").unwrap(),
            StreamId::parse(&format!("retrospective/{id}")).unwrap(),
            json!({"retrospective_id": id, "reason": "manual", "requested_by": "test"}),
        );
        let event_id = event.id.to_string();
        self.store.append(vec![event]).await.unwrap();
        event_id
    }

    async fn teardown(self) {
        self.shutdown.cancel();
        let _ = async_nats::jetstream::new(self.client)
            .delete_stream(&self.relay.stream)
            .await;
    }
}

async fn count(pool: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

async fn wait_for(pool: &PgPool, sql: &'static str, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = count(pool, sql).await;
        if got >= n {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let letters: Vec<(String, i32)> =
                sqlx::query_as("SELECT error, deliveries FROM dead_letters")
                    .fetch_all(pool)
                    .await
                    .unwrap();
            let handled = count(pool, "SELECT count(*) FROM agent_handled").await;
            panic!("{sql}: {got} of {n}; handled records: {handled}; dead letters: {letters:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const COMPLETED: &str = "SELECT count(*) FROM events WHERE type = 'retrospective.completed.v1'";

fn fast() -> RuntimeConfig {
    RuntimeConfig {
        max_deliver: 3,
        backoff_base_ms: 50,
        backoff_max_ms: 200,
        ..RuntimeConfig::default()
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn each_event_is_handled_once_and_its_effects_are_caused_by_it(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let agent = Echo::new();
    let runtime = setup.runtime(Arc::clone(&agent), fast());
    runtime.register().await.unwrap();
    runtime.register().await.unwrap(); // unchanged manifest: no second registration
    tokio::spawn(runtime.clone().run(setup.shutdown.clone()));

    let mut triggers = Vec::new();
    for i in 0..40 {
        triggers.push(setup.trigger(&format!("r{i}")).await);
    }
    wait_for(&pool, COMPLETED, 40).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    assert_eq!(count(&pool, COMPLETED).await, 40, "nothing handled twice");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM agent_handled WHERE agent = 'echo'"
        )
        .await,
        40
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'agent.registered.v1'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'agent.memory.recorded.v1'"
        )
        .await,
        40
    );
    // Every completion is caused by its trigger, in the trigger's correlation, from the agent.
    let rows: Vec<(String, String, String, String)> = sqlx::query_as(
        "SELECT c.causation_id, t.id, c.correlation_id, c.source FROM events c
         JOIN events t ON t.id = c.causation_id
         WHERE c.type = 'retrospective.completed.v1'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 40);
    for (causation, trigger, correlation, source) in rows {
        assert_eq!(causation, trigger);
        assert_eq!(
            correlation, trigger,
            "a trigger without correlation id starts its own"
        );
        assert_eq!(source, "/agents/echo");
    }
    let status = runtime.status().await.unwrap();
    assert_eq!(status[0].consumer, "echo--retrospective_trigger_v1");
    assert!(status[0].last_handled.is_some());
    setup.teardown().await;
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_poison_event_is_dead_lettered_while_the_others_pass(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let agent = Echo::new();
    let runtime = setup.runtime(Arc::clone(&agent), fast());
    runtime.register().await.unwrap();
    tokio::spawn(runtime.clone().run(setup.shutdown.clone()));

    let poison = setup.trigger("poison-1").await;
    setup.trigger("rogue-1").await;
    for i in 0..10 {
        setup.trigger(&format!("ok{i}")).await;
    }
    wait_for(&pool, COMPLETED, 10).await;
    wait_for(&pool, "SELECT count(*) FROM dead_letters", 2).await;

    let letters = runtime.dead_letters(true).await.unwrap();
    assert_eq!(letters.len(), 2);
    let poison_letter = letters.iter().find(|l| l.event_id == poison).unwrap();
    assert_eq!(poison_letter.deliveries, 3);
    assert!(poison_letter.error.contains("cannot digest"));
    let rogue = letters.iter().find(|l| l.event_id != poison).unwrap();
    assert!(
        rogue.error.contains("may not emit proposal.approved.v1"),
        "{}",
        rogue.error
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'agent.failed.v1'"
        )
        .await,
        2
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'proposal.approved.v1'"
        )
        .await,
        0,
        "nothing undeclared escaped"
    );
    assert_eq!(count(&pool, COMPLETED).await, 10);

    // After a fix, a retry handles it exactly once.
    agent.fixed.store(true, Ordering::SeqCst);
    let resolved = runtime.retry_dead_letter(poison_letter.id).await.unwrap();
    assert!(resolved.resolved_at.is_some());
    assert!(
        runtime.retry_dead_letter(poison_letter.id).await.is_err(),
        "resolved letters are not retried"
    );
    assert_eq!(count(&pool, COMPLETED).await, 11);
    let value: Value = sqlx::query_scalar(
        "SELECT count(*)::int8 FROM events WHERE type = 'retrospective.completed.v1' AND data->>'retrospective_id' = 'poison-1'",
    )
    .fetch_one(&pool)
    .await
    .map(|n: i64| json!(n))
    .unwrap();
    assert_eq!(value, json!(1));
    // The rogue one still fails: its retry says so and stays unresolved.
    assert!(runtime.retry_dead_letter(rogue.id).await.is_err());
    assert_eq!(runtime.dead_letters(true).await.unwrap().len(), 1);
    // A start after the dead letters finds the unchanged registration and appends none.
    runtime.register().await.unwrap();
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE type = 'agent.registered.v1'"
        )
        .await,
        1
    );
    setup.teardown().await;
}

/// Two instances share the durable consumer: the work is split, nothing is handled twice.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn two_instances_split_the_work_and_never_duplicate_it(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let (one, two) = (Echo::new(), Echo::new());
    let config = RuntimeConfig {
        concurrency: 2,
        ..fast()
    };
    tokio::spawn(
        setup
            .runtime(Arc::clone(&one), config.clone())
            .run(setup.shutdown.clone()),
    );
    tokio::spawn(
        setup
            .runtime(Arc::clone(&two), config)
            .run(setup.shutdown.clone()),
    );

    for i in 0..150 {
        setup.trigger(&format!("s{i}")).await;
    }
    wait_for(&pool, COMPLETED, 150).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(count(&pool, COMPLETED).await, 150);
    let (a, b) = (
        one.handled.load(Ordering::SeqCst),
        two.handled.load(Ordering::SeqCst),
    );
    assert_eq!(a + b, 150, "each event handled by exactly one instance");
    assert!(a > 0 && b > 0, "both instances took work: {a} and {b}");
    setup.teardown().await;
}

/// The JetStream stream is deleted under traffic: the relay recreates it and relays everything
/// again, the consumers come back, and still each event is handled once.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_deleted_stream_costs_no_event_and_repeats_none(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let agent = Echo::new();
    tokio::spawn(
        setup
            .runtime(Arc::clone(&agent), fast())
            .run(setup.shutdown.clone()),
    );
    for i in 0..40 {
        setup.trigger(&format!("before{i}")).await;
    }
    wait_for(&pool, COMPLETED, 40).await;
    async_nats::jetstream::new(setup.client.clone())
        .delete_stream(&setup.relay.stream)
        .await
        .unwrap();
    for i in 0..40 {
        setup.trigger(&format!("after{i}")).await;
    }
    wait_for(&pool, COMPLETED, 80).await;
    // The re-relayed first 40 reach the agent again: only acknowledged.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&pool, COMPLETED).await, 80);
    assert_eq!(agent.handled.load(Ordering::SeqCst), 80);
    let js = async_nats::jetstream::new(setup.client.clone());
    let mut stream = js.get_stream(&setup.relay.stream).await.unwrap();
    let stored = count(&pool, "SELECT count(*) FROM events").await;
    assert_eq!(stored, 240, "80 triggers, 80 completions, 80 memories");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while stream.info().await.unwrap().state.messages < 240 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the stream was never refilled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        240,
        "everything relayed again, once"
    );
    setup.teardown().await;
}

/// nats-server is SIGKILLed and restarted while events are appended: appends go on (they need
/// PostgreSQL only), nothing is lost, nothing is handled twice.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn nats_down_and_back_loses_nothing_and_repeats_nothing(pool: PgPool) {
    let mut nats = NatsServer::start().await;
    let setup = Setup::on(&pool, &nats.url()).await;
    let agent = Echo::new();
    tokio::spawn(
        setup
            .runtime(Arc::clone(&agent), fast())
            .run(setup.shutdown.clone()),
    );
    for i in 0..30 {
        setup.trigger(&format!("up{i}")).await;
    }
    wait_for(&pool, COMPLETED, 20).await;
    nats.kill();
    for i in 0..30 {
        setup.trigger(&format!("down{i}")).await;
    }
    nats.restart().await;
    for i in 0..30 {
        setup.trigger(&format!("back{i}")).await;
    }
    wait_for(&pool, COMPLETED, 90).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(count(&pool, COMPLETED).await, 90);
    assert_eq!(count(&pool, "SELECT count(*) FROM agent_handled").await, 90);
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    setup.shutdown.cancel();
}

/// Long work that takes `seconds`; counts the runs it starts and the ones it finishes.
struct Slow {
    manifest: Manifest,
    seconds: u64,
    started: AtomicUsize,
    finished: AtomicUsize,
}

impl Agent for Slow {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn long_running(&self) -> bool {
        true
    }

    fn work<'a>(
        &'a self,
        _work: &'a WorkContext,
        _event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<Value, HandlerError>> {
        Box::pin(async move {
            self.started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(self.seconds)).await;
            self.finished.fetch_add(1, Ordering::SeqCst);
            Ok(json!({"slept": self.seconds}))
        })
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let id = event.data["retrospective_id"].as_str().unwrap_or_default();
            ctx.emit(
                "retrospective.completed.v1",
                &format!("retrospective/{id}"),
                json!({"retrospective_id": id, "metrics": {}, "insights": [], "action_items": []}),
            )
        })
    }
}

/// A long run outlives the ack wait and, while it runs, another slot's pull fails (the
/// consumer takes one waiting pull at most, so a third slot's is refused with a 409). The run
/// is not dropped half-way with its keep-alive left behind holding the delivery: it finishes,
/// is acknowledged and handled once, while the consumer restarts around it.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_failed_pull_beside_a_long_run_neither_drops_nor_strands_it(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let ty = EventType::parse("retrospective.trigger.v1").unwrap();
    let agent = Arc::new(Slow {
        manifest: trigger_to_completed("slow"),
        seconds: 3,
        started: AtomicUsize::new(0),
        finished: AtomicUsize::new(0),
    });
    let config = RuntimeConfig {
        ack_wait_secs: 1,
        concurrency: 3,
        ..fast()
    };
    // The runtime's own consumer, made again with room for one waiting pull.
    let js = async_nats::jetstream::new(setup.client.clone());
    let mut consumer = ensure_consumer(
        &js,
        &setup.relay.stream,
        &setup.relay.subject_prefix,
        "slow",
        &ty,
        &config,
    )
    .await
    .unwrap();
    let mut narrow = consumer.info().await.unwrap().config.clone();
    narrow.max_waiting = 1;
    let stream = js.get_stream(&setup.relay.stream).await.unwrap();
    stream
        .delete_consumer(&consumer_name("slow", &ty))
        .await
        .unwrap();
    stream.create_consumer(narrow).await.unwrap();

    setup.trigger("long").await;
    tokio::spawn(
        setup
            .runtime_of(Arc::clone(&agent) as Arc<dyn Agent>, config)
            .run(setup.shutdown.clone()),
    );
    wait_for(&pool, COMPLETED, 1).await;
    // Long enough for a stranded or dropped run to show: two ack waits and a restart.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&pool, COMPLETED).await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM agent_handled").await, 1);
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    assert_eq!(
        (
            agent.started.load(Ordering::SeqCst),
            agent.finished.load(Ordering::SeqCst)
        ),
        (1, 1),
        "the run was neither cut short nor run again"
    );
    setup.teardown().await;
}

/// Appends every trigger to one shared stream at an exact version, under a lock it takes
/// first, as an agent publishing one artifact does (the retrospective agent's report): two
/// handlers of one batch race for the same version, so the batch falls back to one event at a
/// time while the other instance holds the lock.
struct Ledger {
    manifest: Manifest,
    hold: Duration,
    errors: std::sync::Mutex<Vec<String>>,
}

impl Agent for Ledger {
    fn manifest(&self) -> &Manifest {
        &self.manifest
    }

    fn handle<'a>(
        &'a self,
        ctx: &'a mut Context<'_>,
        event: &'a RecordedEvent,
    ) -> BoxFuture<'a, Result<(), HandlerError>> {
        Box::pin(async move {
            let locked = sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('ledger', 0))")
                .execute(ctx.connection())
                .await;
            if let Err(e) = locked {
                self.errors.lock().unwrap().push(e.to_string());
                return Err(e.into());
            }
            tokio::time::sleep(self.hold).await;
            let version: i64 = sqlx::query_scalar(
                "SELECT coalesce(max(stream_version), 0) FROM events WHERE stream_id = 'retrospective/ledger'",
            )
            .fetch_one(ctx.connection())
            .await?;
            let id = event.data["retrospective_id"].as_str().unwrap_or_default();
            let mut entry = NewEvent::new(
                event.workspace.clone(),
                Source::parse("/agents/ledger").unwrap(),
                EventType::parse("retrospective.completed.v1").unwrap(),
                StreamId::parse("retrospective/ledger").unwrap(),
                json!({"retrospective_id": id, "metrics": {}, "insights": [], "action_items": []}),
            );
            entry.expected_version = if version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exactly(u64::try_from(version).unwrap())
            };
            ctx.emit_event(entry)
        })
    }
}

/// Two instances, batches that all lose the race for the shared stream, and an ack wait the
/// one-by-one fallback outlives: a delivery can be handled by both instances at once. Each
/// still takes the handler's lock before the "handled" record (the other order deadlocked
/// against a batch holding the lock), so no handler fails and every trigger is in the ledger
/// once, at versions 1..=N.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn racing_batches_under_a_shared_lock_never_deadlock(pool: PgPool) {
    let setup = Setup::new(&pool).await;
    let ledger = || {
        Arc::new(Ledger {
            manifest: trigger_to_completed("ledger"),
            hold: Duration::from_millis(60),
            errors: std::sync::Mutex::new(Vec::new()),
        })
    };
    let (one, two) = (ledger(), ledger());
    let config = RuntimeConfig {
        ack_wait_secs: 1,
        concurrency: 2,
        batch: 8,
        max_deliver: 20,
        ..fast()
    };
    const N: i64 = 40;
    for i in 0..N {
        setup.trigger(&format!("l{i}")).await;
    }
    for agent in [&one, &two] {
        tokio::spawn(
            setup
                .runtime_of(Arc::clone(agent) as Arc<dyn Agent>, config.clone())
                .run(setup.shutdown.clone()),
        );
    }
    wait_for(&pool, COMPLETED, N).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut errors = one.errors.lock().unwrap().clone();
    errors.extend(two.errors.lock().unwrap().iter().cloned());
    assert!(errors.is_empty(), "handlers failed: {errors:?}");
    let versions: Vec<i64> = sqlx::query_scalar(
        "SELECT stream_version FROM events WHERE stream_id = 'retrospective/ledger' ORDER BY stream_version",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(versions, (1..=N).collect::<Vec<_>>());
    let per_trigger: Vec<i64> = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM events c WHERE c.type = 'retrospective.completed.v1' AND c.causation_id = t.id)
         FROM events t WHERE t.type = 'retrospective.trigger.v1'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_trigger, vec![1; 40], "each trigger in the ledger once");
    assert_eq!(count(&pool, "SELECT count(*) FROM dead_letters").await, 0);
    setup.teardown().await;
}
