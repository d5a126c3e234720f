//! Projection runner tests against a real PostgreSQL (a database per test).

#![allow(clippy::unwrap_used, clippy::expect_used)] // a panic in a test is a failed test

use std::{sync::Arc, time::Duration};

use serde_json::{Value, json};
use sqlx::PgPool;
use switchyard_events::{Catalog, EventType, NewEvent, Source, StreamId, Workspace};
use switchyard_projections::{AgentState, Projection, ProjectionRunner};
use switchyard_store::{EventStore, StoreConfig};
use tokio_util::sync::CancellationToken;

fn store(pool: &PgPool) -> EventStore {
    EventStore::new(
        pool.clone(),
        Arc::new(Catalog::builtin().unwrap()),
        &StoreConfig::default(),
    )
}

fn runner(store: &EventStore) -> ProjectionRunner {
    // Short rebuild pages too, so that rebuilds here span many pages.
    ProjectionRunner::new(
        store.clone(),
        vec![Arc::new(AgentState) as Arc<dyn Projection>],
        25,
    )
    .with_rebuild_batch(7)
}

async fn append_agent_events(store: &EventStore, n: usize, tag: &str) {
    for i in 0..n {
        let agent = format!("agent-{}", i % 3);
        let event = NewEvent::new(
            Workspace::parse(if i % 2 == 0 { "alpha" } else { "beta" }).unwrap(),
            Source::parse(&format!("/agents/{agent}")).unwrap(),
            EventType::parse("agent.memory.recorded.v1").unwrap(),
            StreamId::parse(&format!("agent/{agent}/memory")).unwrap(),
            json!({"agent": agent, "key": format!("k{}", i % 5), "value": format!("{tag}{i}")}),
        );
        store.append(vec![event]).await.unwrap();
    }
}

/// The projection's tables as sorted JSON, to compare two builds.
async fn snapshot(pool: &PgPool) -> Value {
    let memory: Vec<(String, String, String, Value, i64)> = sqlx::query_as(
        "SELECT workspace, agent, key, value, position FROM proj_agent_state.memory ORDER BY 1, 2, 3",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let activity: Vec<(String, String, i64, i64)> = sqlx::query_as(
        "SELECT workspace, agent, emitted, failed FROM proj_agent_state.activity ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    json!({"memory": memory, "activity": activity})
}

async fn run_until_caught_up(runner: &ProjectionRunner, pool: &PgPool, events: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        runner.step(&AgentState).await.unwrap();
        let applied: Option<i64> = sqlx::query_scalar(
            "SELECT applied FROM projection_checkpoints WHERE name = 'agent_state'",
        )
        .fetch_optional(pool)
        .await
        .unwrap();
        if applied == Some(events) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "projection never caught up"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the checkpoint counts `n` applied events. (A lag of 0 is not enough: events are
/// visible only once every older transaction of the cluster has ended, and parallel tests hold
/// some open.)
async fn wait_for_applied(runner: &ProjectionRunner, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while runner.status(1000).await.unwrap()[0].applied < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "never applied {n} events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn applies_events_once_with_its_checkpoint(pool: PgPool) {
    let store = store(&pool);
    let runner = runner(&store);
    runner.ensure_schemas().await.unwrap();
    append_agent_events(&store, 60, "a").await;
    run_until_caught_up(&runner, &pool, 60).await;

    let snap = snapshot(&pool).await;
    let emitted: i64 = snap["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_i64().unwrap())
        .sum();
    assert_eq!(emitted, 60, "each event applied exactly once");
    // The last value per key wins: key k4 of agent-0 in workspace alpha was last set by i = 54.
    let value: Value = sqlx::query_scalar(
        "SELECT value FROM proj_agent_state.memory WHERE workspace = 'alpha' AND agent = 'agent-0' AND key = 'k4'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(value, json!("a54"));
    let status = runner.status(1000).await.unwrap();
    assert_eq!(status[0].lag_events, 0);
    assert_eq!(status[0].applied, 60);
}

/// Events `agent_state` does not read: retrospective triggers from the scheduler.
async fn append_other_events(store: &EventStore, n: usize) {
    for i in 0..n {
        let trigger = NewEvent::new(
            Workspace::parse("alpha").unwrap(),
            Source::parse("/scheduler").unwrap(),
            EventType::parse("retrospective.trigger.v1").unwrap(),
            StreamId::parse(&format!("retrospective/o{i}")).unwrap(),
            json!({"retrospective_id": format!("o{i}"), "reason": "manual", "requested_by": "test"}),
        );
        store.append(vec![trigger]).await.unwrap();
    }
}

/// Two runners (two server instances) on one projection take turns: nothing applied twice,
/// also while both move past events the projection does not read (without its lock).
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn two_instances_never_apply_twice(pool: PgPool) {
    let store = store(&pool);
    let (one, two) = (runner(&store), runner(&store));
    one.ensure_schemas().await.unwrap();
    let shutdown = CancellationToken::new();
    let tasks = [
        tokio::spawn(one.clone().run(shutdown.clone())),
        tokio::spawn(two.run(shutdown.clone())),
    ];
    tokio::join!(
        append_agent_events(&store, 150, "b"),
        append_other_events(&store, 150)
    );
    wait_for_applied(&one, 150).await;
    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    let snap = snapshot(&pool).await;
    let emitted: i64 = snap["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_i64().unwrap())
        .sum();
    assert_eq!(emitted, 150);
}

/// Past events it does not read, a projection's checkpoint moves with nothing applied; the
/// events it reads after them are applied once.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_projection_moves_past_events_it_does_not_read(pool: PgPool) {
    let store = store(&pool);
    let runner = runner(&store);
    runner.ensure_schemas().await.unwrap();
    append_other_events(&store, 10).await;
    let last: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let checkpoint = || {
        sqlx::query_as::<_, (i64, i64)>(
            "SELECT position, applied FROM projection_checkpoints WHERE name = 'agent_state'",
        )
        .fetch_optional(&pool)
    };
    // Visible once every older transaction of the cluster (other tests') has ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        assert_eq!(
            runner.step(&AgentState).await.unwrap(),
            0,
            "nothing to apply"
        );
        // A page that is not full moves past the whole visible store, not just its last event.
        if checkpoint()
            .await
            .unwrap()
            .is_some_and(|(position, applied)| position >= last && applied == 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the checkpoint never moved past the 10 events"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    append_agent_events(&store, 3, "c").await;
    run_until_caught_up(&runner, &pool, 3).await;
    assert_eq!(
        checkpoint().await.unwrap().map(|(_, applied)| applied),
        Some(3)
    );
    let emitted: i64 =
        sqlx::query_scalar("SELECT sum(emitted)::int8 FROM proj_agent_state.activity")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(emitted, 3);
}

/// A rebuild runs beside the live projection while events keep coming, swaps in, and equals
/// what the live runner built.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_rebuild_swaps_in_and_equals_the_live_projection(pool: PgPool) {
    let store = store(&pool);
    let live = runner(&store);
    live.ensure_schemas().await.unwrap();
    append_agent_events(&store, 80, "c").await;
    run_until_caught_up(&live, &pool, 80).await;
    let before = snapshot(&pool).await;

    // Keep appending and applying while the rebuild runs.
    let shutdown = CancellationToken::new();
    let follower = tokio::spawn(live.clone().run(shutdown.clone()));
    let writer = {
        let store = store.clone();
        tokio::spawn(async move { append_agent_events(&store, 40, "d").await })
    };
    // Readers keep working during the rebuild: the live tables stay in place until the swap.
    let rebuilt = live.rebuild("agent_state").await.unwrap();
    assert!(rebuilt >= 80);
    writer.await.unwrap();
    wait_for_applied(&live, 120).await;
    shutdown.cancel();
    follower.await.unwrap();

    let after_live = snapshot(&pool).await;
    assert_ne!(
        after_live, before,
        "the new events were applied after the swap"
    );
    live.rebuild("agent_state").await.unwrap();
    assert_eq!(
        snapshot(&pool).await,
        after_live,
        "the projection equals a fresh rebuild"
    );
    let emitted: i64 = after_live["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_i64().unwrap())
        .sum();
    assert_eq!(emitted, 120);
    assert!(live.rebuild("nope").await.is_err());
}

/// Proposals made, approved and rejected per author, from the proposal events.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn agent_state_counts_proposals_per_author(pool: PgPool) {
    let store = store(&pool);
    let runner = runner(&store);
    runner.ensure_schemas().await.unwrap();
    let ws = Workspace::parse("alpha").unwrap();
    let event = |ty: &str, id: &str, data: Value| {
        NewEvent::new(
            ws.clone(),
            Source::parse("/tests").unwrap(),
            EventType::parse(ty).unwrap(),
            StreamId::parse(&format!("proposal/{id}")).unwrap(),
            data,
        )
    };
    let hash = "a".repeat(64);
    for id in ["p1", "p2", "p3"] {
        store
            .append(vec![event(
                "proposal.created.v1",
                id,
                json!({"proposal_id": id, "title": "t", "description": "d", "author": "spec", "content_hash": hash,
                       "changes": [{"path": "README.md", "action": "delete"}]}),
            )])
            .await
            .unwrap();
    }
    store
        .append(vec![event("proposal.approved.v1", "p1", json!({"proposal_id": "p1", "approved_by": "ann", "channel": "api", "content_hash": hash}))])
        .await
        .unwrap();
    store
        .append(vec![event("proposal.rejected.v1", "p2", json!({"proposal_id": "p2", "rejected_by": "bob", "channel": "cli", "reason": "out of scope"}))])
        .await
        .unwrap();
    run_until_caught_up(&runner, &pool, 5).await;
    let row: (i64, i64, i64, Option<String>) = sqlx::query_as(
        "SELECT made, approved, rejected, last_rejection_reason FROM proj_agent_state.proposals
         WHERE workspace = 'alpha' AND agent = 'spec'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(row, (3, 1, 1, Some("out of scope".into())));
}

/// Counts memory events per workspace; `V2` adds a column, as a new release would.
struct Counter<const V2: bool>;

impl<const V2: bool> Projection for Counter<V2> {
    fn name(&self) -> &'static str {
        "counter"
    }

    fn schema(&self) -> &'static str {
        if V2 {
            "CREATE TABLE counts (workspace text PRIMARY KEY, n bigint NOT NULL, last_key text)"
        } else {
            "CREATE TABLE counts (workspace text PRIMARY KEY, n bigint NOT NULL)"
        }
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        event: &'a switchyard_events::RecordedEvent,
    ) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        Box::pin(async move {
            let sql = if V2 {
                "INSERT INTO counts VALUES ($1, 1, $2)
                 ON CONFLICT (workspace) DO UPDATE SET n = counts.n + 1, last_key = $2"
            } else {
                "INSERT INTO counts VALUES ($1, 1) ON CONFLICT (workspace) DO UPDATE SET n = counts.n + 1"
            };
            let mut query = sqlx::query(sql).bind(event.workspace.as_str());
            if V2 {
                query = query.bind(event.data["key"].as_str());
            }
            query.execute(&mut *tx).await?;
            Ok(())
        })
    }
}

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_projection_whose_tables_changed_is_rebuilt_at_start(pool: PgPool) {
    let store = store(&pool);
    append_agent_events(&store, 10, "v").await;
    let v1 = ProjectionRunner::new(store.clone(), vec![Arc::new(Counter::<false>)], 4);
    v1.ensure_schemas().await.unwrap();
    wait_for_applied_named(&v1, &Counter::<false>, &pool, 10).await;

    // The same definitions again: nothing is rebuilt (the table is not replaced).
    let oid = |pool: PgPool| async move {
        sqlx::query_scalar::<_, sqlx::postgres::types::Oid>(
            "SELECT 'proj_counter.counts'::regclass::oid",
        )
        .fetch_one(&pool)
        .await
        .unwrap()
    };
    let before = oid(pool.clone()).await;
    v1.ensure_schemas().await.unwrap();
    assert_eq!(oid(pool.clone()).await, before);

    // A release with another table: rebuilt from the store before it follows again.
    let v2 = ProjectionRunner::new(store.clone(), vec![Arc::new(Counter::<true>)], 4);
    v2.ensure_schemas().await.unwrap();
    let rows: Vec<(String, i64, Option<String>)> =
        sqlx::query_as("SELECT workspace, n, last_key FROM proj_counter.counts ORDER BY 1")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert_eq!(rows.iter().map(|r| r.1).sum::<i64>(), 10, "{rows:?}");
    assert!(
        rows.iter().all(|r| r.2.is_some()),
        "the new column is filled: {rows:?}"
    );
}

async fn wait_for_applied_named(
    runner: &ProjectionRunner,
    projection: &dyn Projection,
    pool: &PgPool,
    events: i64,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        runner.step(projection).await.unwrap();
        let applied: Option<i64> =
            sqlx::query_scalar("SELECT applied FROM projection_checkpoints WHERE name = $1")
                .bind(projection.name())
                .fetch_optional(pool)
                .await
                .unwrap();
        if applied == Some(events) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "never caught up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `agent_state` applies a page of memory records and activity in two statements: the tables
/// come out exactly as when the same events are applied one page of one event at a time, and
/// each key holds its last value.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_page_applied_at_once_equals_one_event_at_a_time(pool: PgPool) {
    let store = store(&pool);
    append_agent_events(&store, 60, "e").await;
    let one_by_one = ProjectionRunner::new(
        store.clone(),
        vec![Arc::new(AgentState) as Arc<dyn Projection>],
        1,
    );
    one_by_one.ensure_schemas().await.unwrap();
    run_until_caught_up(&one_by_one, &pool, 60).await;
    let single = snapshot(&pool).await;

    let paged = ProjectionRunner::new(
        store.clone(),
        vec![Arc::new(AgentState) as Arc<dyn Projection>],
        500,
    );
    assert_eq!(paged.rebuild("agent_state").await.unwrap(), 60);
    assert_eq!(snapshot(&pool).await, single);
    // alpha (even i), agent-0 (i % 3 == 0), k0 (i % 5 == 0): i = 0 and 30; the last wins.
    let value: Value = sqlx::query_scalar(
        "SELECT value FROM proj_agent_state.memory
         WHERE workspace = 'alpha' AND agent = 'agent-0' AND key = 'k0'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(value, json!("e30"));
    let emitted: i64 = single["activity"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[2].as_i64().unwrap())
        .sum();
    assert_eq!(emitted, 60);
}

/// `agent_state` handed every event: the same tables, whatever `types` leaves out.
struct EveryEvent;

impl Projection for EveryEvent {
    fn name(&self) -> &'static str {
        "agent_state"
    }

    fn schema(&self) -> &'static str {
        AgentState.schema()
    }

    fn apply<'a>(
        &'a self,
        tx: &'a mut sqlx::PgConnection,
        event: &'a switchyard_events::RecordedEvent,
    ) -> futures::future::BoxFuture<'a, Result<(), sqlx::Error>> {
        AgentState.apply(tx, event)
    }
}

/// `agent_state` reads only its types and the agents' events: built that way it equals the
/// build that read everything, on a store where agents and others write every kind of event
/// (memory records from the API too, agents' events of types it otherwise ignores).
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn agent_state_reads_less_and_builds_the_same_tables(pool: PgPool) {
    let store = store(&pool);
    append_agent_events(&store, 30, "a").await;
    for (i, source) in ["/api", "/agents/agent-1", "/scheduler", "/agents/agent-2"]
        .iter()
        .cycle()
        .take(20)
        .enumerate()
    {
        let trigger = NewEvent::new(
            Workspace::parse("alpha").unwrap(),
            Source::parse(source).unwrap(),
            EventType::parse("retrospective.trigger.v1").unwrap(),
            StreamId::parse(&format!("retrospective/r{i}")).unwrap(),
            json!({"retrospective_id": format!("r{i}"), "reason": "manual", "requested_by": "test"}),
        );
        let memory = NewEvent::new(
            Workspace::parse("beta").unwrap(),
            Source::parse("/api").unwrap(),
            EventType::parse("agent.memory.recorded.v1").unwrap(),
            StreamId::parse("agent/agent-9/memory").unwrap(),
            json!({"agent": "agent-9", "key": format!("m{}", i % 4), "value": i}),
        );
        store.append(vec![trigger, memory]).await.unwrap();
    }
    // Visible to readers only once every older transaction of the cluster (other tests') ended.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store
        .read_all(
            switchyard_events::Cursor::START,
            &switchyard_store::ReadFilter::default(),
            100,
        )
        .await
        .unwrap()
        .events
        .len()
        < 70
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the 70 events never became visible"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let filtered = runner(&store);
    filtered.ensure_schemas().await.unwrap();
    // 30 agent memory records, 20 memory records from the API, 10 triggers from agents.
    assert_eq!(filtered.rebuild("agent_state").await.unwrap(), 60);
    let narrow = snapshot(&pool).await;
    let everything = ProjectionRunner::new(
        store.clone(),
        vec![Arc::new(EveryEvent) as Arc<dyn Projection>],
        25,
    );
    assert_eq!(everything.rebuild("agent_state").await.unwrap(), 70);
    assert_eq!(snapshot(&pool).await, narrow);
    let emitted: i64 = sqlx::query_scalar(
        "SELECT emitted FROM proj_agent_state.activity WHERE workspace = 'alpha' AND agent = 'agent-1'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(emitted, 5 + 5, "its memory records and its triggers");
}
