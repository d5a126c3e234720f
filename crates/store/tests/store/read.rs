use sqlx::PgPool;
use switchyard_events::{Cursor, EventType, RecordedEvent};
use switchyard_store::{EventStore, ReadFilter, Scanned};

use crate::{memory, read_n, store, ws};

#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn global_reads_page_and_filter(pool: PgPool) {
    let store = store(&pool);
    for i in 0..10 {
        let workspace = if i % 2 == 0 { "even" } else { "odd" };
        store
            .append(vec![memory(workspace, "agent/a", &format!("k{i}"))])
            .await
            .unwrap();
    }

    assert_eq!(
        read_n(&store, Cursor::START, &ReadFilter::default(), 10)
            .await
            .events
            .len(),
        10
    );

    // Paging through everything returns each event once, in append order (one writer).
    let mut cursor = Cursor::START;
    let mut keys = Vec::new();
    loop {
        let page = store
            .read_all(cursor, &ReadFilter::default(), 3)
            .await
            .unwrap();
        if page.events.is_empty() {
            break;
        }
        keys.extend(
            page.events
                .iter()
                .map(|e| e.data["key"].as_str().unwrap().to_owned()),
        );
        cursor = page.next;
    }
    let expected: Vec<String> = (0..10).map(|i| format!("k{i}")).collect();
    assert_eq!(keys, expected);

    // A workspace filter returns only that workspace, and its cursor then skips the rest.
    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: Some(ws("odd")),
        ty: None,
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    assert_eq!(page.events.len(), 5);
    assert!(page.events.iter().all(|e| e.workspace.as_str() == "odd"));
    let after = store
        .read_all(page.next, &ReadFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        after.events.is_empty(),
        "the filtered cursor moved past everything visible"
    );

    let filter = ReadFilter {
        types: None,
        or_source_prefix: None,
        workspace: None,
        ty: Some(EventType::parse("proposal.approved.v1").unwrap()),
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    assert!(page.events.is_empty());
    assert!(
        page.next > Cursor::START,
        "an empty filtered read still advances"
    );

    // A set of types (a projection's): only those, in order, paged by the limit.
    let note = |i: usize| {
        switchyard_events::NewEvent::new(
            ws("even"),
            switchyard_events::Source::parse("/tests").unwrap(),
            EventType::parse("agent.message.sent.v1").unwrap(),
            switchyard_events::StreamId::parse(&format!("message/m{i}")).unwrap(),
            serde_json::json!({"message_id": format!("m{i}"), "sender": "a", "recipient": "*",
                               "type": "note", "content": i}),
        )
    };
    for i in 0..4 {
        store.append(vec![note(i)]).await.unwrap();
        store
            .append(vec![memory("even", "agent/b", &format!("x{i}"))])
            .await
            .unwrap();
    }
    let filter = ReadFilter {
        types: Some(vec![
            "agent.message.sent.v1".into(),
            "proposal.approved.v1".into(),
        ]),
        ..ReadFilter::default()
    };
    read_n(&store, Cursor::START, &ReadFilter::default(), 18).await;
    let first = store.read_all(Cursor::START, &filter, 3).await.unwrap();
    let rest = store.read_all(first.next, &filter, 3).await.unwrap();
    let contents: Vec<i64> = first
        .events
        .iter()
        .chain(&rest.events)
        .map(|e| {
            assert_eq!(e.ty.as_str(), "agent.message.sent.v1");
            e.data["content"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(contents, [0, 1, 2, 3]);
    let after = store
        .read_all(rest.next, &ReadFilter::default(), 100)
        .await
        .unwrap();
    assert!(
        after.events.is_empty(),
        "the cursor moved past the skipped types too"
    );

    // Types, or a source prefix (an agent's events whatever their type): the memory records
    // of an agent come, the /tests ones do not, the messages still do.
    let mut by_agent = memory("even", "agent/c", "from-an-agent");
    by_agent.source = switchyard_events::Source::parse("/agents/c").unwrap();
    let mut not_an_agent = memory("even", "agent/c", "from-agents-lookalike");
    not_an_agent.source = switchyard_events::Source::parse("/agentsish/c").unwrap();
    store.append(vec![by_agent, not_an_agent]).await.unwrap();
    read_n(&store, Cursor::START, &ReadFilter::default(), 20).await;
    let filter = ReadFilter {
        types: Some(vec!["agent.message.sent.v1".into()]),
        or_source_prefix: Some("/agents/".into()),
        ..ReadFilter::default()
    };
    let page = store.read_all(Cursor::START, &filter, 100).await.unwrap();
    let got: Vec<(&str, &str)> = page
        .events
        .iter()
        .map(|e| (e.ty.as_str(), e.source.as_str()))
        .collect();
    let mut expected = vec![("agent.message.sent.v1", "/tests"); 4];
    expected.push(("agent.memory.recorded.v1", "/agents/c"));
    assert_eq!(got, expected);
}

/// Every page of a scan from `after`, and where it ended.
async fn scan_all(
    store: &EventStore,
    after: Cursor,
    filter: &ReadFilter,
    page: usize,
) -> (Vec<RecordedEvent>, Cursor) {
    let mut pages = store.scan(after, filter.clone(), page);
    let (mut events, mut end) = (Vec::new(), None);
    while let Some(scanned) = pages.recv().await {
        match scanned.unwrap() {
            Scanned::Page(p) => {
                assert!(end.is_none(), "a page after the end");
                assert!(!p.is_empty() && p.len() <= page, "page of {}", p.len());
                events.extend(p);
            }
            Scanned::End(next) => end = Some(next),
        }
    }
    (events, end.expect("the scan says where it ended"))
}

/// A scan sends what paged reads return, in pages of the size asked for, with the filter
/// applied in the database. It holds back what a transaction that took its id first has not
/// committed yet (and everything behind it), and the scan from its end cursor picks that up:
/// every event exactly once, in global order.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_scan_pages_everything_once_and_never_skips_a_late_commit(pool: PgPool) {
    let store = store(&pool);
    let notes = |n: usize, stream: &str| -> Vec<_> {
        (0..n)
            .map(|i| {
                let mut event = memory("scan", stream, &format!("k{i}"));
                event.ty = EventType::parse("plan.cancelled.v1").unwrap();
                event.data = serde_json::json!({"plan_id": format!("p{i}"), "cancelled_by": "t"});
                event
            })
            .collect()
    };
    for b in 0..5 {
        let mut batch: Vec<_> = (0..50)
            .map(|i| memory("scan", &format!("agent/b{b}"), &format!("k{i}")))
            .collect();
        if b % 2 == 0 {
            batch.extend(notes(10, &format!("plan/b{b}")));
        }
        store.append(batch).await.unwrap();
    }
    let memory_only = ReadFilter {
        types: Some(vec!["agent.memory.recorded.v1".to_owned()]),
        ..ReadFilter::default()
    };
    let expected = read_n(&store, Cursor::START, &memory_only, 250)
        .await
        .events;
    assert_eq!(expected.len(), 250);

    // A transaction takes its id now and appends later; two quick appends commit after it.
    let mut early = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *early)
        .await
        .unwrap();
    for q in 0..2 {
        store
            .append(vec![memory("scan", "agent/quick", &format!("q{q}"))])
            .await
            .unwrap();
    }
    store
        .append_in(&mut early, vec![memory("scan", "agent/slow", "s")])
        .await
        .unwrap();

    let (first, end) = scan_all(&store, Cursor::START, &memory_only, 64).await;
    assert_eq!(
        first.iter().map(|e| e.id.to_string()).collect::<Vec<_>>(),
        expected
            .iter()
            .map(|e| e.id.to_string())
            .collect::<Vec<_>>(),
        "the scan returns what the paged reads return, and nothing behind the open transaction"
    );

    early.commit().await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let (mut rest, mut cursor) = (Vec::new(), end);
    while rest.len() < 3 && tokio::time::Instant::now() < deadline {
        let (more, next) = scan_all(&store, cursor, &memory_only, 64).await;
        rest.extend(more);
        cursor = next;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let streams: Vec<&str> = rest.iter().map(|e| e.stream.as_str()).collect();
    assert_eq!(
        streams,
        ["agent/slow", "agent/quick", "agent/quick"],
        "the late commit comes first, then what waited behind it, once each"
    );
    let cursors: Vec<Cursor> = first.iter().chain(&rest).map(|e| e.cursor).collect();
    assert!(
        cursors.windows(2).all(|w| w[0] < w[1]),
        "global order, no repeats"
    );
}

/// A running count: each count goes on from the last one's cursor, counts what became
/// visible since, once, and leaves out what an older open transaction holds back until it
/// commits.
#[sqlx::test(migrator = "switchyard_store::MIGRATOR")]
async fn a_running_count_counts_each_visible_event_once(pool: PgPool) {
    let store = store(&pool);
    let batch = |from: usize, n: usize| -> Vec<_> {
        (from..from + n)
            .map(|i| memory("count", "agent/c", &format!("k{i}")))
            .collect()
    };
    store.append(batch(0, 30)).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut first = store.count_after(Cursor::START).await.unwrap();
    let mut total = first.events;
    while total < 30 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        first = store.count_after(first.next).await.unwrap();
        total += first.events;
    }
    assert_eq!(total, 30);
    let stored_head: i64 = sqlx::query_scalar("SELECT max(position) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(first.head, Some(stored_head));

    // An older transaction appends last: the quick appends behind it wait with it.
    let mut early = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *early)
        .await
        .unwrap();
    store.append(batch(30, 5)).await.unwrap();
    store
        .append_in(&mut early, vec![memory("count", "agent/slow", "s")])
        .await
        .unwrap();
    let held = store.count_after(first.next).await.unwrap();
    assert_eq!(
        held.events, 0,
        "nothing behind the open transaction is counted yet"
    );
    early.commit().await.unwrap();
    let (mut cursor, mut more) = (held.next, 0);
    while more < 6 && tokio::time::Instant::now() < deadline {
        let counted = store.count_after(cursor).await.unwrap();
        more += counted.events;
        cursor = counted.next;
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(
        more, 6,
        "the late commit and what waited behind it, once each"
    );
    assert_eq!(store.count_after(cursor).await.unwrap().events, 0);
}
